"""Print the GRANTs that give the application's role what it needs, and no more.

Run its output as the owner role (or a superuser) after every `migrate`: the
statements are made from the tables that exist now, so they stay in step with
the schema. The audit table gets SELECT and INSERT only; its chain head table
also lets the role lock the head row and move `last_*`. The owner keeps
TRUNCATE, DROP and ALTER TABLE (which could disable the append-only trigger) to
itself.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

APP_TABLE = "SELECT, INSERT, UPDATE, DELETE"
# Tables whose grants differ from APP_TABLE: privilege lists per table.
SPECIAL = {
    "audit_auditevent": ["SELECT, INSERT"],
    "audit_auditchain": ["SELECT, INSERT", "UPDATE (last_seq, last_hash, last_time)"],
}
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")


def _role(value: str) -> str:
    if not ROLE_NAME.match(value):
        raise CommandError(f"{value!r} is not a plain lower-case role name.")
    return value


class Command(BaseCommand):
    help = "Print the SQL that grants the application's role its privileges on the current schema."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--app-role", required=True, help="role in the app's DATABASE_URL")
        parser.add_argument(
            "--owner-role",
            help="role that owns the tables (default: the owner of audit_auditevent); "
            "tables owned by anyone else are handed to it",
        )

    def handle(self, *args: Any, app_role: str, owner_role: str | None, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("Database roles apply to PostgreSQL only.")
        app = _role(app_role)
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner), current_schema()
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
                   ORDER BY c.relname"""
            )
            rows = cursor.fetchall()
            cursor.execute(
                """SELECT current_database(), pg_get_userbyid(d.datdba),
                          pg_get_userbyid(n.nspowner)
                   FROM pg_database d, pg_namespace n
                   WHERE d.datname = current_database() AND n.nspname = current_schema()"""
            )
            database, database_owner, schema_owner = cursor.fetchone() or ("", "", "")
        owners = {name: owner for name, _kind, owner, _schema in rows}
        if "audit_auditevent" not in owners:
            raise CommandError("No audit_auditevent table: run `manage.py migrate` first.")
        owner = _role(owner_role or owners["audit_auditevent"])
        if owner == app:
            raise CommandError(
                f"The application's role {app} owns audit_auditevent: "
                "pass --owner-role to hand the tables to another role."
            )
        schema = connection.ops.quote_name(rows[0][3])
        q = connection.ops.quote_name
        lines = [
            f"-- Keyward: {len(rows)} tables; run as {owner} or a superuser.",
            "BEGIN;",
        ]
        lines += [
            f"ALTER TABLE {schema}.{q(name)} OWNER TO {q(owner)};"
            for name, table_owner in owners.items()
            if table_owner != owner
        ]
        # The owner of the database (through PostgreSQL 15's pg_database_owner)
        # or of the schema can drop the schema with every table in it.
        if database_owner == app:
            lines.append(f"ALTER DATABASE {q(database)} OWNER TO {q(owner)};")
        if schema_owner == app:
            lines.append(f"ALTER SCHEMA {schema} OWNER TO {q(owner)};")
        lines += [
            f"GRANT USAGE ON SCHEMA {schema} TO {q(app)};",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {q(app)};",
        ]
        for name in owners:
            for privileges in SPECIAL.get(name, [APP_TABLE]):
                lines.append(f"GRANT {privileges} ON TABLE {schema}.{q(name)} TO {q(app)};")
        lines += [
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {q(app)};",
            # Tables of later migrations: ordinary ones need no further step; rerun
            # this command after migrating so any new special case is applied too.
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {q(owner)} IN SCHEMA {schema} "
            f"GRANT {APP_TABLE} ON TABLES TO {q(app)};",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {q(owner)} IN SCHEMA {schema} "
            f"GRANT USAGE, SELECT ON SEQUENCES TO {q(app)};",
            "COMMIT;",
        ]
        self.stdout.write("\n".join(lines))
