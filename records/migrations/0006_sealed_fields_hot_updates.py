"""Re-encryption rewrites sealed fields without touching an index (HOT updates).

PostgreSQL rewrites a row in place on its own page, with no new index entry
and one WAL record, when the update changes no indexed column and the page has
room for the new version. Re-encryption changes `dek` and `pii` of every row
of a tenant; with the (dek, record) index each rewrite inserted into both
indexes and wrote four WAL records.

1. Records get a (tenant, id) index: re-encryption walks a tenant's rows in id
   order through it (records.reencrypt), instead of each older DEK's rows
   through the (dek, record) index.
2. The (dek, record) index goes. "Records per DEK" is in `DekRecordCount`
   (migration 0004); whether a DEK still seals anything is counted there first
   and confirmed through the tenant's records (records.selectors.sealed_under).
3. Sealed fields' pages are filled to half on PostgreSQL (fillfactor 50), so a
   batch that rewrites every row of a page finds room for the new versions
   there. Rows written before this migration move to such pages the first time
   they are rewritten. A table that has been re-encrypted once holds about as
   many pages either way: its rewrites left half of every page free.

Both index changes take their tables' write locks while they run (a plain
CREATE INDEX and DROP INDEX).
"""

from __future__ import annotations

from django.db import migrations, models


def _fillfactor(value: str):  # type: ignore[no-untyped-def]
    def apply(apps, schema_editor):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER TABLE archive_sealedfields {value}")

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0005_reencryption_parts"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="record",
            index=models.Index(fields=["tenant", "id"], name="record_tenant_id"),
        ),
        migrations.RemoveIndex(
            model_name="sealedfields",
            name="sealed_dek_record",
        ),
        migrations.RunPython(
            _fillfactor("SET (fillfactor = 50)"), _fillfactor("RESET (fillfactor)")
        ),
    ]
