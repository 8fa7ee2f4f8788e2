"""Run by tests/records/test_reencryption.py in a process of its own, on `make run`'s
embedded SQLite database: two tenants' records interleaved, one rotates and
re-encrypts. Prints what the job did and what is left under which DEK."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    # The old DEK retires as soon as nothing is under it: this process is the
    # only one that could still be writing under it.
    os.environ["KEYWARD_DEK_RETIRE_GRACE_SECONDS"] = "0"
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from audit.services import Actor
    from keys.models import DataKey, DekState
    from keys.runtime import envelope
    from keys.services.deks import dek_rotate
    from records.models import Record, SealedFields
    from records.reencryption import reencryption_run, reencryption_start
    from records.selectors import sealed_under
    from records.services import record_fields, records_create
    from records.synthetic import synthetic_records
    from tenants.services import tenant_create

    call_command("migrate", verbosity=0, interactive=False)
    settings.KEYWARD_REENCRYPT_BATCH = 7  # several batches, a short last one
    system = Actor.system("test")
    ours = tenant_create(name="Initech", slug="initech", actor=system)
    theirs = tenant_create(name="Hooli", slug="hooli", actor=system)
    for n in range(3):  # interleaved record ids
        records_create(tenant=ours, items=list(synthetic_records(10, seed=n, prefix=f"o{n}-")))
        records_create(tenant=theirs, items=list(synthetic_records(5, seed=n, prefix=f"t{n}-")))

    def fields() -> dict[str, dict[str, str]]:
        return {
            str(r.uid): record_fields(ours, r)
            for r in Record.objects.filter(tenant=ours).select_related("sealed")
        }

    before = fields()
    old = DataKey.objects.get(tenant=ours, state=DekState.ACTIVE)
    dek_rotate(tenant=ours, actor=system, reason="test")
    envelope().forget(str(ours.pk))
    under_old_before = sealed_under(old)
    job = reencryption_run(job_id=str(reencryption_start(tenant=ours, actor=system).pk))
    current = DataKey.objects.get(tenant=ours, state=DekState.ACTIVE)
    old.refresh_from_db()
    answers = {
        "vendor": connection.vendor,
        "state": job.state,
        "done": job.done,
        "under_old_before": under_old_before,
        "under_old_after": sealed_under(old),
        "old_state": old.state,
        "ours_under": sorted(
            set(SealedFields.objects.filter(record__tenant=ours).values_list("dek_id", flat=True))
        ),
        "current": current.pk,
        "theirs_moved": SealedFields.objects.filter(record__tenant=theirs, dek=current).count(),
        "same_fields": fields() == before,
    }
    sys.stdout.write(json.dumps(answers))


if __name__ == "__main__":
    main()
