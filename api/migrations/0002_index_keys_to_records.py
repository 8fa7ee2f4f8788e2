"""IndexKey and LookupRow now belong to the records app (archive/0003); state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0001_initial"),
        ("archive", "0003_index_keys_and_reencryption_jobs"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="LookupRow"),
                migrations.DeleteModel(name="IndexKey"),
            ],
        ),
    ]
