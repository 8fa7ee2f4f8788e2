"""ReencryptionJob now belongs to the records app (archive/0003); state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0007_key_source_credentials"),
        ("archive", "0003_index_keys_and_reencryption_jobs"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[migrations.DeleteModel(name="ReencryptionJob")],
        ),
    ]
