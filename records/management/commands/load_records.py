from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import Actor, record
from records.models import Record
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Load N synthetic device and user records, encrypted, into a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", metavar="SLUG")
        parser.add_argument("count", type=int)
        parser.add_argument("--batch", type=int, default=2000)

    def handle(self, *args: Any, tenant: str, count: int, batch: int, **options: Any) -> None:
        if count < 1:
            raise CommandError("count must be at least 1")
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"No tenant with the slug {tenant!r}.")
        offset = Record.objects.filter(tenant=found).count()
        items = list(synthetic_records(count, seed=offset + 1, prefix=f"r{offset}-"))
        for start in range(0, count, batch):
            records_create(tenant=found, items=items[start : start + batch])
        record(
            tenant=found,
            actor=Actor.system("manage.py load_records"),
            action="records.load",
            details={"records": count},
        )
        self.stdout.write(f"Loaded {count} record(s) into {found.slug}.")
