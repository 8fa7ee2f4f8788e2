"""Records per DEK kept by triggers on the sealed fields (records.models.DekRecordCount).

PostgreSQL: one statement-level trigger per operation, with transition
tables, adds each statement's net change per DEK to the slot of the writing
backend (`pg_backend_pid() % 8`), rows in DEK order so that two statements
touching the same slots always lock them in the same order. SQLite (the
embedded default, one writer at a time): row-level triggers on slot 0.

The counts of the rows already stored are taken after the triggers exist, in
the same transaction: CREATE TRIGGER locks the table against writes until the
migration commits, so no write is counted twice or missed.
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

POSTGRES_UP = """
CREATE FUNCTION archive_sealed_count() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO archive_dekrecordcount AS c (dek_id, slot, records)
        SELECT dek_id, pg_backend_pid() % 8, count(*)
        FROM sealed_new GROUP BY dek_id ORDER BY dek_id
        ON CONFLICT (dek_id, slot) DO UPDATE SET records = c.records + EXCLUDED.records;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO archive_dekrecordcount AS c (dek_id, slot, records)
        SELECT dek_id, pg_backend_pid() % 8, -count(*)
        FROM sealed_old GROUP BY dek_id ORDER BY dek_id
        ON CONFLICT (dek_id, slot) DO UPDATE SET records = c.records + EXCLUDED.records;
    ELSE
        INSERT INTO archive_dekrecordcount AS c (dek_id, slot, records)
        SELECT dek_id, pg_backend_pid() % 8, sum(delta)
        FROM (
            SELECT dek_id, 1 AS delta FROM sealed_new
            UNION ALL
            SELECT dek_id, -1 AS delta FROM sealed_old
        ) AS change
        GROUP BY dek_id HAVING sum(delta) <> 0 ORDER BY dek_id
        ON CONFLICT (dek_id, slot) DO UPDATE SET records = c.records + EXCLUDED.records;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER archive_sealed_count_insert
    AFTER INSERT ON archive_sealedfields REFERENCING NEW TABLE AS sealed_new
    FOR EACH STATEMENT EXECUTE FUNCTION archive_sealed_count();
CREATE TRIGGER archive_sealed_count_delete
    AFTER DELETE ON archive_sealedfields REFERENCING OLD TABLE AS sealed_old
    FOR EACH STATEMENT EXECUTE FUNCTION archive_sealed_count();
CREATE TRIGGER archive_sealed_count_update
    AFTER UPDATE ON archive_sealedfields REFERENCING OLD TABLE AS sealed_old NEW TABLE AS sealed_new
    FOR EACH STATEMENT EXECUTE FUNCTION archive_sealed_count();
INSERT INTO archive_dekrecordcount (dek_id, slot, records)
SELECT dek_id, 0, count(*) FROM archive_sealedfields GROUP BY dek_id;
"""
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS archive_sealed_count_insert ON archive_sealedfields;
DROP TRIGGER IF EXISTS archive_sealed_count_delete ON archive_sealedfields;
DROP TRIGGER IF EXISTS archive_sealed_count_update ON archive_sealedfields;
DROP FUNCTION IF EXISTS archive_sealed_count();
"""


def _add(dek: str, delta: str) -> str:
    return (
        f"INSERT INTO archive_dekrecordcount (dek_id, slot, records) VALUES ({dek}, 0, {delta}) "  # noqa: S608
        f"ON CONFLICT (dek_id, slot) DO UPDATE SET records = records + {delta};"
    )


SQLITE_UP = [
    f"""CREATE TRIGGER archive_sealed_count_insert AFTER INSERT ON archive_sealedfields
        BEGIN {_add("NEW.dek_id", "1")} END;""",
    f"""CREATE TRIGGER archive_sealed_count_delete AFTER DELETE ON archive_sealedfields
        BEGIN {_add("OLD.dek_id", "-1")} END;""",
    f"""CREATE TRIGGER archive_sealed_count_update AFTER UPDATE OF dek_id ON archive_sealedfields
        WHEN OLD.dek_id IS NOT NEW.dek_id
        BEGIN {_add("OLD.dek_id", "-1")} {_add("NEW.dek_id", "1")} END;""",
    """INSERT INTO archive_dekrecordcount (dek_id, slot, records)
        SELECT dek_id, 0, count(*) FROM archive_sealedfields GROUP BY dek_id;""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS archive_sealed_count_insert;",
    "DROP TRIGGER IF EXISTS archive_sealed_count_delete;",
    "DROP TRIGGER IF EXISTS archive_sealed_count_update;",
]


def _run(statements_by_vendor: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def apply(apps, schema_editor):  # type: ignore[no-untyped-def]
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement, params=None)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0003_index_keys_and_reencryption_jobs"),
        ("keys", "0010_health_checks"),
    ]

    operations = [
        migrations.CreateModel(
            name="DekRecordCount",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("slot", models.SmallIntegerField()),
                ("records", models.BigIntegerField(default=0)),
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
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("dek", "slot"), name="dek_record_count_slot")
                ],
            },
        ),
        migrations.RunPython(
            _run({"postgresql": [POSTGRES_UP], "sqlite": SQLITE_UP}),
            _run({"postgresql": [POSTGRES_DOWN], "sqlite": SQLITE_DOWN}),
        ),
    ]
