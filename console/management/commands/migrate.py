"""`migrate` as the schema owner when MIGRATE_DATABASE_URL is set.

Why an override of `migrate` and not a second database alias: an alias would be
another test database, another choice for every `--database`, and the migration
history would be recorded through whichever alias ran it. Here there is one
database and one history; only the role that connects differs, for this one
process, so the tables it creates (and the post-migrate rows) belong to the
owner. With MIGRATE_DATABASE_URL unset this is Django's `migrate` unchanged.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS, connections


class Command(DjangoMigrate):
    help = f"{DjangoMigrate.help} Connects as MIGRATE_DATABASE_URL's role when that is set."

    def handle(self, *args: Any, **options: Any) -> None:
        owner = settings.MIGRATE_DATABASE
        if owner and options["database"] == DEFAULT_DB_ALIAS:
            connection = connections[DEFAULT_DB_ALIAS]
            connection.close()  # anything opened so far was the application's role
            connection.settings_dict["USER"] = owner["USER"]
            connection.settings_dict["PASSWORD"] = owner["PASSWORD"]
        super().handle(*args, **options)
