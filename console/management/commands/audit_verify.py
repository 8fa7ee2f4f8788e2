from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.models import VENDOR_CHAIN, AuditChain, AuditEvent
from audit.services import audit_verify_chain, chain_key
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Verify the audit hash chains; name the first broken link of each, exit 1 if any."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="verify only this tenant's chain")

    def handle(self, *args: Any, tenant: str | None = None, **options: Any) -> None:
        if tenant:
            found = Tenant.objects.filter(slug=tenant).first()
            if found is None:
                raise CommandError(f"No tenant with the slug {tenant!r}.")
            keys = [chain_key(found)]
        else:
            keys = sorted(
                set(AuditChain.objects.values_list("key", flat=True))
                | set(AuditEvent.objects.values_list("chain", flat=True).distinct())
            )
            keys = keys or [VENDOR_CHAIN]
        names = {str(t.pk): t.slug for t in Tenant.objects.all()}
        broken = 0
        for key in keys:
            label = names.get(key, key)
            link = audit_verify_chain(key)
            if link is None:
                self.stdout.write(f"ok      {label}")
            else:
                broken += 1
                self.stdout.write(f"BROKEN  {label}: event #{link.seq}: {link.problem}")
        if broken:
            raise CommandError(f"{broken} broken chain(s)", returncode=1)
