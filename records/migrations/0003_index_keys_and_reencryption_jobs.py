"""The blind-index keys, their lookup rows and re-encryption jobs join the records app.

They were made by api/0001 and keys/0001; their tables keep their names
(db_table), so this changes the migration state only and touches no row.
api/0002 and keys/0008 drop them from their old apps' state.
"""

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0002_sealed_dek_statement_check"),
        ("api", "0001_initial"),
        ("keys", "0007_key_source_credentials"),
        ("tenants", "0003_destroy_after"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="IndexKey",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("version", models.PositiveIntegerField()),
                        ("wrapped", models.BinaryField()),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("building", "Rebuilding lookups"),
                                    ("active", "Active"),
                                    ("retired", "Retired"),
                                ],
                                default="active",
                                max_length=16,
                            ),
                        ),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        ("rebuilt_through", models.BigIntegerField(default=0)),
                        ("retired_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "kek_version",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to="keys.kekversion",
                            ),
                        ),
                        (
                            "tenant",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="index_keys",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "api_indexkey",
                        "ordering": ["-version"],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("tenant", "version"), name="index_key_version_per_tenant"
                            ),
                            models.UniqueConstraint(
                                condition=models.Q(("state", "active")),
                                fields=("tenant",),
                                name="one_active_index_key",
                            ),
                            models.UniqueConstraint(
                                condition=models.Q(("state", "building")),
                                fields=("tenant",),
                                name="one_building_index_key",
                            ),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="LookupRow",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("field", models.CharField(max_length=32)),
                        ("version", models.PositiveIntegerField()),
                        ("digest", models.BinaryField(max_length=32)),
                        (
                            "record",
                            models.ForeignKey(
                                db_index=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="lookup_rows",
                                to="archive.record",
                            ),
                        ),
                        (
                            "tenant",
                            models.ForeignKey(
                                db_index=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "api_lookuprow",
                        "indexes": [
                            models.Index(
                                fields=["tenant", "field", "version", "digest"],
                                name="lookup_digest",
                            )
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("record", "field", "version"),
                                name="lookup_once_per_version",
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ReencryptionJob",
                    fields=[
                        (
                            "id",
                            models.UUIDField(
                                default=uuid.uuid4,
                                editable=False,
                                primary_key=True,
                                serialize=False,
                            ),
                        ),
                        (
                            "state",
                            models.CharField(
                                choices=[
                                    ("queued", "Queued"),
                                    ("running", "Running"),
                                    ("done", "Done"),
                                    ("failed", "Failed"),
                                ],
                                default="queued",
                                max_length=16,
                            ),
                        ),
                        ("total", models.BigIntegerField(default=0)),
                        ("done", models.BigIntegerField(default=0)),
                        ("last_record_id", models.BigIntegerField(default=0)),
                        ("error", models.TextField(blank=True)),
                        ("created", models.DateTimeField(auto_now_add=True)),
                        ("finished", models.DateTimeField(blank=True, null=True)),
                        (
                            "target_dek",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to="keys.datakey",
                            ),
                        ),
                        (
                            "tenant",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="reencryption_jobs",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "keys_reencryptionjob",
                        "ordering": ["-created"],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("state__in", ["queued", "running"])),
                                fields=("tenant",),
                                name="one_open_reencryption_per_tenant",
                            )
                        ],
                    },
                ),
            ],
        ),
    ]
