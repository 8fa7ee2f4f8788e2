from __future__ import annotations

from django.apps import AppConfig


class RecordsConfig(AppConfig):
    name = "records"
    # The label of the app's first home: its tables (archive_record,
    # archive_sealedfields) and migration history keep their names, so an
    # existing database upgrades without renaming a table.
    label = "archive"
    verbose_name = "Records"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: the consumer uses models, which exist
        # only once every app is loaded.
        from keys.consumers import consumer_register  # noqa: PLC0415
        from records.consumer import RECORDS  # noqa: PLC0415

        consumer_register(RECORDS)
