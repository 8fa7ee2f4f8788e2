"""Check the DEK that sealed fields name once per statement instead of once per row.

A foreign key checks every inserted or updated row on its own: on PostgreSQL
that is a locking lookup in keys_datakey per row, about as much work as the
row update itself, and re-encryption updates every sealed row of a tenant.
These triggers enforce the same rule per statement:

- writing sealed fields (INSERT or UPDATE, statement-level with a transition
  table): every distinct DEK the statement wrote must exist; each is locked
  FOR KEY SHARE, as a foreign key does, so it cannot be deleted before the
  writer commits.
- deleting a DEK (or changing its id) that any sealed fields still name is
  refused. In READ COMMITTED (the application's level) the check runs after
  the row lock is granted, with a fresh snapshot, so it sees every writer that
  held the DEK locked.

SQLite (the embedded default) gets row-level triggers with the same effect.
Django's `on_delete=PROTECT` still guards deletes made through the ORM.
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

POSTGRES_UP = """
CREATE FUNCTION archive_sealed_dek_exists() RETURNS trigger AS $$
DECLARE
    missing bigint[];
BEGIN
    SELECT array_agg(n.dek_id) INTO missing
    FROM (SELECT DISTINCT dek_id FROM sealed_new) AS n
    WHERE NOT EXISTS (
        SELECT 1 FROM keys_datakey AS d WHERE d.id = n.dek_id FOR KEY SHARE
    );
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'sealed fields name data keys that do not exist: %', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER archive_sealed_dek_insert
    AFTER INSERT ON archive_sealedfields REFERENCING NEW TABLE AS sealed_new
    FOR EACH STATEMENT EXECUTE FUNCTION archive_sealed_dek_exists();
CREATE TRIGGER archive_sealed_dek_update
    AFTER UPDATE ON archive_sealedfields REFERENCING NEW TABLE AS sealed_new
    FOR EACH STATEMENT EXECUTE FUNCTION archive_sealed_dek_exists();

CREATE FUNCTION keys_datakey_unreferenced() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM archive_sealedfields WHERE dek_id = OLD.id) THEN
        RAISE EXCEPTION 'data key % still seals records', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER keys_datakey_unreferenced_delete
    BEFORE DELETE ON keys_datakey
    FOR EACH ROW EXECUTE FUNCTION keys_datakey_unreferenced();
CREATE TRIGGER keys_datakey_unreferenced_rekey
    BEFORE UPDATE OF id ON keys_datakey
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION keys_datakey_unreferenced();
"""
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS archive_sealed_dek_insert ON archive_sealedfields;
DROP TRIGGER IF EXISTS archive_sealed_dek_update ON archive_sealedfields;
DROP FUNCTION IF EXISTS archive_sealed_dek_exists();
DROP TRIGGER IF EXISTS keys_datakey_unreferenced_delete ON keys_datakey;
DROP TRIGGER IF EXISTS keys_datakey_unreferenced_rekey ON keys_datakey;
DROP FUNCTION IF EXISTS keys_datakey_unreferenced();
"""
SQLITE_UP = [
    """CREATE TRIGGER archive_sealed_dek_insert BEFORE INSERT ON archive_sealedfields
        WHEN NOT EXISTS (SELECT 1 FROM keys_datakey WHERE id = NEW.dek_id)
        BEGIN SELECT RAISE(ABORT, 'sealed fields name a data key that does not exist'); END;""",
    """CREATE TRIGGER archive_sealed_dek_update BEFORE UPDATE OF dek_id ON archive_sealedfields
        WHEN NOT EXISTS (SELECT 1 FROM keys_datakey WHERE id = NEW.dek_id)
        BEGIN SELECT RAISE(ABORT, 'sealed fields name a data key that does not exist'); END;""",
    """CREATE TRIGGER keys_datakey_unreferenced_delete BEFORE DELETE ON keys_datakey
        WHEN EXISTS (SELECT 1 FROM archive_sealedfields WHERE dek_id = OLD.id)
        BEGIN SELECT RAISE(ABORT, 'data key still seals records'); END;""",
    """CREATE TRIGGER keys_datakey_unreferenced_rekey BEFORE UPDATE OF id ON keys_datakey
        WHEN OLD.id IS NOT NEW.id
         AND EXISTS (SELECT 1 FROM archive_sealedfields WHERE dek_id = OLD.id)
        BEGIN SELECT RAISE(ABORT, 'data key still seals records'); END;""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS archive_sealed_dek_insert;",
    "DROP TRIGGER IF EXISTS archive_sealed_dek_update;",
    "DROP TRIGGER IF EXISTS keys_datakey_unreferenced_delete;",
    "DROP TRIGGER IF EXISTS keys_datakey_unreferenced_rekey;",
]


def _run(statements_by_vendor: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def apply(apps, schema_editor):  # type: ignore[no-untyped-def]
        for statement in statements_by_vendor.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement, params=None)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0001_initial"),
        ("keys", "0007_key_source_credentials"),
    ]

    operations = [
        # Down: the triggers go before the foreign key comes back.
        migrations.RunPython(
            migrations.RunPython.noop,
            _run({"postgresql": [POSTGRES_DOWN], "sqlite": SQLITE_DOWN}),
        ),
        migrations.AlterField(
            model_name="sealedfields",
            name="dek",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="sealed_fields",
                to="keys.datakey",
            ),
        ),
        migrations.RunPython(
            _run({"postgresql": [POSTGRES_UP], "sqlite": SQLITE_UP}),
            migrations.RunPython.noop,
        ),
    ]
