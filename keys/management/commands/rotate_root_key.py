from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import Actor, record
from keys.rootkey import root_key_file


class Command(BaseCommand):
    help = (
        "Add a new vendor root key version; new data keys are wrapped under it, older "
        "versions keep unwrapping. Follow with rewrap_data_keys."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        version = root_key_file().rotate()
        record(
            tenant=None,
            actor=Actor.system("manage.py rotate_root_key"),
            action="kek.root_rotate",
            target=f"root-{version}",
        )
        self.stdout.write(f"Root key version root-{version} is now current.")
