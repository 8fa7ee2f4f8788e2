from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import Actor
from keys.services.rootkeys import root_key_rewrap


class Command(BaseCommand):
    help = (
        "Move everything under an older vendor root key version to the current one: "
        "vendor-managed data and lookup keys, sealed secrets (key-store credentials, "
        "uploaded keys, import private keys) and Key Vault blob signatures. Safe to rerun."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = root_key_rewrap(actor=Actor.system("manage.py rewrap_data_keys"))
        for slug, count in sorted(report.data_keys.items()):
            self.stdout.write(f"{slug}: {count} data key(s) rewrapped")
        for what, count in sorted(report.sealed.items()):
            self.stdout.write(f"{what}: {count} sealed again")
        self.stdout.write(f"Key Vault blobs signed again: {report.signatures}")
        self.stdout.write(
            f"Done: {sum(report.data_keys.values())} data key(s) in "
            f"{len(report.data_keys)} tenant(s)."
        )
