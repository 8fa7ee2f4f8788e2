"""Objects and bytes per location and DEK kept by triggers (objects.models.ObjectUsageCount).

PostgreSQL: one statement-level trigger per operation, with transition
tables, adds each statement's net change per (tenant, location, DEK) to the
slot of the writing backend (`pg_backend_pid() % 8`), in key order so that
two statements always lock shared rows in the same order. SQLite (the
embedded default, one writer at a time): row-level triggers on slot 0.

The counts of the objects already stored are taken after the triggers exist,
in the same transaction: CREATE TRIGGER locks the table against writes until
the migration commits, so no write is counted twice or missed.
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

_UPSERT = """
        ON CONFLICT (tenant_id, location, dek_id, slot) DO UPDATE
        SET count = c.count + EXCLUDED.count, bytes = c.bytes + EXCLUDED.bytes;"""
_INTO = (
    "INSERT INTO objects_objectusagecount AS c (tenant_id, location, dek_id, slot, count, bytes)"
)

POSTGRES_UP = f"""
CREATE FUNCTION objects_usage_count() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_INTO}
        SELECT tenant_id, location, dek_id, pg_backend_pid() % 8, count(*), sum(size)
        FROM objects_new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 {_UPSERT}
    ELSIF TG_OP = 'DELETE' THEN
        {_INTO}
        SELECT tenant_id, location, dek_id, pg_backend_pid() % 8, -count(*), -sum(size)
        FROM objects_old GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 {_UPSERT}
    ELSE
        {_INTO}
        SELECT tenant_id, location, dek_id, pg_backend_pid() % 8, sum(n), sum(b)
        FROM (
            SELECT tenant_id, location, dek_id, 1 AS n, size AS b FROM objects_new
            UNION ALL
            SELECT tenant_id, location, dek_id, -1 AS n, -size AS b FROM objects_old
        ) AS change
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0 OR sum(b) <> 0 ORDER BY 1, 2, 3 {_UPSERT}
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER objects_usage_count_insert
    AFTER INSERT ON objects_storedobject REFERENCING NEW TABLE AS objects_new
    FOR EACH STATEMENT EXECUTE FUNCTION objects_usage_count();
CREATE TRIGGER objects_usage_count_delete
    AFTER DELETE ON objects_storedobject REFERENCING OLD TABLE AS objects_old
    FOR EACH STATEMENT EXECUTE FUNCTION objects_usage_count();
CREATE TRIGGER objects_usage_count_update
    AFTER UPDATE ON objects_storedobject
    REFERENCING OLD TABLE AS objects_old NEW TABLE AS objects_new
    FOR EACH STATEMENT EXECUTE FUNCTION objects_usage_count();
INSERT INTO objects_objectusagecount (tenant_id, location, dek_id, slot, count, bytes)
SELECT tenant_id, location, dek_id, 0, count(*), sum(size)
FROM objects_storedobject GROUP BY 1, 2, 3;
"""  # noqa: S608 (constants only)
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS objects_usage_count_insert ON objects_storedobject;
DROP TRIGGER IF EXISTS objects_usage_count_delete ON objects_storedobject;
DROP TRIGGER IF EXISTS objects_usage_count_update ON objects_storedobject;
DROP FUNCTION IF EXISTS objects_usage_count();
"""


def _add(row: str, sign: str) -> str:
    return (
        "INSERT INTO objects_objectusagecount (tenant_id, location, dek_id, slot, count, bytes) "  # noqa: S608
        f"VALUES ({row}.tenant_id, {row}.location, {row}.dek_id, 0, {sign}1, {sign}{row}.size) "
        "ON CONFLICT (tenant_id, location, dek_id, slot) DO UPDATE "
        f"SET count = count {sign} 1, bytes = bytes {sign} {row}.size;"
    )


SQLITE_UP = [
    f"""CREATE TRIGGER objects_usage_count_insert AFTER INSERT ON objects_storedobject
        BEGIN {_add("NEW", "+")} END;""",
    f"""CREATE TRIGGER objects_usage_count_delete AFTER DELETE ON objects_storedobject
        BEGIN {_add("OLD", "-")} END;""",
    f"""CREATE TRIGGER objects_usage_count_update
        AFTER UPDATE OF tenant_id, location, dek_id, size ON objects_storedobject
        BEGIN {_add("OLD", "-")} {_add("NEW", "+")} END;""",
    """INSERT INTO objects_objectusagecount (tenant_id, location, dek_id, slot, count, bytes)
        SELECT tenant_id, location, dek_id, 0, count(*), sum(size)
        FROM objects_storedobject GROUP BY 1, 2, 3;""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS objects_usage_count_insert;",
    "DROP TRIGGER IF EXISTS objects_usage_count_delete;",
    "DROP TRIGGER IF EXISTS objects_usage_count_update;",
]


def _run(statements_by_vendor: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def apply(apps, schema_editor):  # type: ignore[no-untyped-def]
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement, params=None)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("objects", "0004_orphan_versions"),
        ("keys", "0010_health_checks"),
        ("tenants", "0003_destroy_after"),
    ]

    operations = [
        migrations.CreateModel(
            name="ObjectUsageCount",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "location",
                    models.CharField(
                        choices=[("shared", "Shared storage"), ("dedicated", "Dedicated storage")],
                        max_length=16,
                    ),
                ),
                ("slot", models.SmallIntegerField()),
                ("count", models.BigIntegerField(default=0)),
                ("bytes", models.BigIntegerField(default=0)),
                (
                    "dek",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="keys.datakey",
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("tenant", "location", "dek", "slot"),
                        name="object_usage_count_slot",
                    )
                ],
            },
        ),
        migrations.RunPython(
            _run({"postgresql": [POSTGRES_UP], "sqlite": SQLITE_UP}),
            _run({"postgresql": [POSTGRES_DOWN], "sqlite": SQLITE_DOWN}),
        ),
    ]
