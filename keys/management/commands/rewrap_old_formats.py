from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import Actor
from keys.services.formats import wrapped_formats_upgrade


class Command(BaseCommand):
    help = (
        "Rewrap every wrapped key still in a format that is read but no longer written "
        "(KMIP version 1, unsigned Key Vault blobs), under the same key version. The "
        "beat runs it hourly; safe to rerun."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = wrapped_formats_upgrade(actor=Actor.system("manage.py rewrap_old_formats"))
        for slug, count in sorted(report.rewrapped.items()):
            left = report.left.get(slug, 0)
            if count or left:
                self.stdout.write(f"{slug}: {count} rewrapped, {left} left for a later run")
        self.stdout.write(
            f"Done: {sum(report.rewrapped.values())} rewrapped, "
            f"{sum(report.left.values())} left; {report.signed_sources} Key Vault "
            "source(s) now refuse unsigned blobs."
        )
