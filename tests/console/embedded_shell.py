"""Run by tests/console/test_shell_facts.py in a process of its own, on `make run`'s
embedded SQLite database: the shell's facts for two tenants through the statement
compiled once, against each app's own selector. Prints what it found."""

from __future__ import annotations

import json
import os
from datetime import timedelta


def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from audit.models import StreamDestination, StreamKind, StreamState
    from audit.selectors import chain_position
    from audit.services import Actor, record
    from console.shell import compiled, shell_facts, shell_query, statement_for
    from keys.consumers import open_data_jobs
    from keys.expiry import expiring_version
    from keys.models import DataKey, DekState, KekState, KekVersion, KeySource, SourceState
    from records.models import ReencryptionJob
    from tenants.selectors import support_access_now
    from tenants.services import tenant_create
    from tests.tenants.test_access import ask

    call_command("migrate", verbosity=0, interactive=False)
    system = Actor.system("test")
    acme = tenant_create(name="Acme", slug="acme", actor=system)
    globex = tenant_create(name="Globex", slug="globex", actor=system)
    record(tenant=globex, actor=system, action="key.test")
    # A version of the tenant's key source that expires (as an uploaded key's does).
    source = KeySource.objects.get(tenant=acme, state=SourceState.ACTIVE)
    soon = KekVersion.objects.create(
        source=source,
        provider_version="expiring",
        state=KekState.ACTIVE,
        material_expires_at=timezone.now() + timedelta(days=6),
    )
    destination = StreamDestination.objects.create(
        tenant=globex, kind=StreamKind.SYSLOG, host="siem.globex.test", port=6514
    )
    destination.state = StreamState.PAUSED
    destination.save()
    support = get_user_model().objects.create_user(
        username="support@vendor.test", email="support@vendor.test", is_staff=True
    )
    ask(globex, support)
    # A re-encryption of acme's data, queued: the live poller goes fast.
    ReencryptionJob.objects.create(
        tenant=acme, target_dek=DataKey.objects.get(tenant=acme, state=DekState.ACTIVE)
    )

    def facts() -> dict[str, object]:
        found: dict[str, object] = {}
        for tenant in (acme, globex):
            got = shell_facts(tenant)
            found[tenant.slug] = {
                "facts": [
                    got.chain_position,
                    got.key_expiring,
                    got.stream_paused,
                    got.support_access,
                    got.jobs_open,
                ],
                "selectors": [
                    chain_position(tenant),
                    expiring_version(tenant) is not None,
                    StreamDestination.objects.filter(
                        tenant=tenant, state=StreamState.PAUSED
                    ).exists(),
                    support_access_now(tenant) is not None,
                    any(jobs.exists() for jobs in open_data_jobs(tenant)),
                ],
                "same_statement": compiled(shell_query(tenant))
                == (statement_for().sql, statement_for().bind(tenant.pk)),
            }
        return found

    before = facts()
    # Past the 30-day window on the database's clock: no longer expiring.
    soon.material_expires_at = timezone.now() + timedelta(days=40)
    soon.save()
    after = facts()
    # Expired a second ago: not "expiring" (the key is gone, the health check says so).
    soon.material_expires_at = timezone.now() - timedelta(seconds=1)
    soon.save()
    expired = facts()
    print(
        json.dumps(
            {"vendor": connection.vendor, "before": before, "after": after, "expired": expired}
        )
    )


if __name__ == "__main__":
    main()
