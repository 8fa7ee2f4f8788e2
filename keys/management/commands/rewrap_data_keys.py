from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import Actor
from keys.services.deks import kek_rewrap_vendor_deks


class Command(BaseCommand):
    help = "Rewrap every vendor-managed data key under the newest root key version."

    def handle(self, *args: Any, **options: Any) -> None:
        moved = kek_rewrap_vendor_deks(actor=Actor.system("manage.py rewrap_data_keys"))
        for slug, count in sorted(moved.items()):
            self.stdout.write(f"{slug}: {count} data key(s) rewrapped")
        self.stdout.write(f"Done: {sum(moved.values())} data key(s) in {len(moved)} tenant(s).")
