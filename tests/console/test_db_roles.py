"""An app role with db_roles_sql's grants can append audit events and nothing worse.

One fresh database and two roles: `migrate` runs as the owner through
MIGRATE_DATABASE_URL, the owner applies `db_roles_sql`'s output, and then the
application's role writes as Keyward does while every way of erasing audit
rows is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.dbroles import Roles, database_with_two_roles, server_url

ROOT = Path(__file__).resolve().parents[2]

APP_WRITES = """
from audit.services import Actor, record
from tenants.models import Tenant
from tenants.services import tenant_create, tenant_rename
actor = Actor.system("db-roles test")
tenant = tenant_create(name="Acme", slug="acme", actor=actor)
tenant_rename(tenant=tenant, name="Acme Corp", actor=actor)
record(tenant=None, actor=actor, action="test.app_role")
print(Tenant.objects.get(pk=tenant.pk).name)
"""


@pytest.fixture
def roles() -> Iterator[Roles]:
    with database_with_two_roles("kw_roles") as made:
        yield made


def manage(roles: Roles, *args: str) -> str:
    env = {
        **os.environ,
        "KEYWARD_MODE": "embedded",
        "DATABASE_URL": roles.url(roles.app),
        "MIGRATE_DATABASE_URL": roles.url(roles.owner),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_app_role_appends_audit_events_but_cannot_erase_them(roles: Roles) -> None:
    manage(roles, "migrate", "--noinput", "--verbosity", "0")
    grants = manage(roles, "db_roles_sql", "--app-role", roles.app)
    with psycopg.connect(roles.url(roles.owner), autocommit=True) as owner:
        table_owner = owner.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'audit_auditevent'"
        ).fetchone()
        assert table_owner == (roles.owner,)
        owner.execute(grants.encode())

    renamed = manage(roles, "shell", "--verbosity", "0", "--command", APP_WRITES)
    assert renamed.strip() == "Acme Corp"

    refused = [
        "TRUNCATE audit_auditevent",
        "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only",
        "DROP TABLE audit_auditevent CASCADE",
        "UPDATE audit_auditevent SET reason = 'rewritten'",
        "DELETE FROM audit_auditevent",
        "DELETE FROM audit_auditchain",
        "UPDATE audit_auditchain SET key = 'forged'",
    ]
    with psycopg.connect(roles.url(roles.app), autocommit=True) as app:
        count = app.execute("SELECT count(*) FROM audit_auditevent").fetchone()
        assert count is not None and count[0] >= 3
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement.encode())
        assert app.execute("SELECT count(*) FROM audit_auditevent").fetchone() == count


def test_an_installation_whose_app_role_owns_everything_is_handed_to_the_owner(
    roles: Roles,
) -> None:
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(roles.database), sql.Identifier(roles.app)
            )
        )
    as_app_only = Roles(roles.database, roles.app, roles.app)  # no owner role yet
    manage(as_app_only, "migrate", "--noinput", "--verbosity", "0")
    with pytest.raises(AssertionError, match="owns audit_auditevent"):
        manage(as_app_only, "db_roles_sql", "--app-role", roles.app)

    grants = manage(
        as_app_only, "db_roles_sql", "--app-role", roles.app, "--owner-role", roles.owner
    )
    assert "ALTER DATABASE" in grants
    with psycopg.connect(server_url(roles.database), autocommit=True) as admin:
        admin.execute(grants.encode())
    with psycopg.connect(roles.url(roles.app), autocommit=True) as app:
        owners = app.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        assert owners == [(roles.owner,)]
        for statement in ("TRUNCATE audit_auditevent", "DROP SCHEMA public CASCADE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement.encode())
        app.execute("UPDATE tenants_tenant SET name = name")


def test_migrate_database_url_must_name_the_same_database() -> None:
    roles = Roles("keyward_elsewhere", "owner", "app")
    env = {
        **os.environ,
        "KEYWARD_MODE": "embedded",
        "DATABASE_URL": server_url("keyward_here"),
        "MIGRATE_DATABASE_URL": roles.url("owner"),
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "MIGRATE_DATABASE_URL must name DATABASE_URL's database" in done.stderr
