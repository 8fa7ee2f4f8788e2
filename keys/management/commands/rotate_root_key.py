from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import Actor
from keys.services.rootkeys import root_key_rotate


class Command(BaseCommand):
    help = (
        "Add a new vendor root key version; new data keys and sealed secrets use it, "
        "older versions keep opening. Follow with rewrap_data_keys, then retire_root_key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        number = root_key_rotate(actor=Actor.system("manage.py rotate_root_key"))
        self.stdout.write(f"Root key version root-{number} is now current.")
