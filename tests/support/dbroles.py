"""A fresh database owned by one new role, with a second role for the application.

The test PostgreSQL server's superuser makes both roles and the database, and
drops them again afterwards, so tests can run `migrate` and `db_roles_sql` the
way the README tells an operator to.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from django.db import connection
from psycopg import sql

PASSWORD = "db-roles-test-password"


@dataclass
class Roles:
    database: str
    owner: str
    app: str

    def url(self, role: str) -> str:
        db = connection.settings_dict
        return f"postgres://{role}:{PASSWORD}@{db['HOST']}:{db['PORT']}/{self.database}"


def server_url(database: str) -> str:
    """The test server's superuser on `database`."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{database}"


@contextmanager
def database_with_two_roles(prefix: str) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    made = Roles(f"{prefix}_{suffix}", f"{prefix}_owner_{suffix}", f"{prefix}_app_{suffix}")
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        for role in (made.owner, made.app):
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(PASSWORD)
                )
            )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(made.database), sql.Identifier(made.owner)
            )
        )
        try:
            yield made
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(made.database)
                )
            )
            for role in (made.owner, made.app):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
