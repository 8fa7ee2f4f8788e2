"""Crypto-shredding of tenants whose waiting period ended, its worker killed with SIGKILL.

Tenants on a customer's KMS key (LocalStack) are revoked and scheduled for
destruction with the waiting period over; `keys.run_due_destructions` (the
beat's job, and its own resume) is killed at random points while it works
through them (marks over the tenants destroyed so far, from a printed seed).
At every kill each tenant is either wholly destroyed or wholly intact (its
DEKs still open through the customer's key); at the end every due tenant is
destroyed once, a tenant not yet due is untouched and still decrypts, and
the audit chains verify.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from audit.services import Actor
from keys.models import DataKey
from keys.services.lifecycle import tenant_revoke, tenant_schedule_destroy
from keys.services.sources import byok_enable, byok_enable_run, key_source_register, key_source_test
from keys.tasks import run_due_destructions
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.keys.conftest import CUSTOMER_ACCOUNT
from tests.support import invariants
from tests.support.aws import create_kms_key
from tests.support.faults import scale, seeded
from tests.support.kills import kill_repeatedly, spread_marks, task_on_worker

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

KILLS = scale(2, 10)
TENANTS = scale(10, 40)  # destroyed one transaction each: enough for a kill between any two
SYSTEM = Actor.system("tests")
ADMIN = Actor("user", "0", "key admin (tests)")


def revoked_tenant(n: int, key_arn: str) -> Tenant:
    """A tenant that enabled the customer's key, then revoked it."""
    tenant = tenant_create(name=f"Shred {n}", slug=f"shred-{n}", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(5, seed=n)))
    source = key_source_register(
        tenant=tenant,
        kind="aws_kms",
        config={"key_arn": key_arn, "role_arn": "", "external_id": "keyward-test"},
        actor=SYSTEM,
    )
    source = key_source_test(source=source, actor=SYSTEM)
    assert source.test_passed, source.test_results
    byok_enable(tenant=tenant, source=source, actor=ADMIN)
    byok_enable_run(source_id=str(source.pk))
    tenant_revoke(tenant=tenant, actor=ADMIN, confirm=tenant.slug)
    tenant.refresh_from_db()
    assert tenant.state == ServiceState.REVOKED
    return tenant


def whole(tenants: list[Tenant], tally: invariants.Tally) -> None:
    """Each tenant destroyed entirely, or not at all."""
    for tenant in tenants:
        tenant.refresh_from_db()
        if tenant.state == ServiceState.DESTROYED:
            tally.add("tenant destroyed entirely", invariants.destroyed(tenant))
        else:
            assert tenant.state == ServiceState.REVOKED, tenant.state
            assert DataKey.objects.filter(tenant=tenant, state="active").count() == 1
            tally.add("DEKs of a tenant not yet shredded open", invariants.deks_unwrap(tenant))


def test_destruction_killed_midway_shreds_each_tenant_once(aws_env: None, tmp_path: Path) -> None:
    key_arn = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    tenants = [revoked_tenant(n, key_arn) for n in range(TENANTS)]
    for tenant in tenants:
        tenant_schedule_destroy(tenant=tenant, actor=ADMIN, confirm=tenant.slug)
    Tenant.objects.filter(pk__in=[t.pk for t in tenants]).update(
        destroy_after=timezone.now() - timedelta(minutes=1)
    )
    later = revoked_tenant(TENANTS, key_arn)  # scheduled, but its waiting period runs on
    tenant_schedule_destroy(tenant=later, actor=ADMIN, confirm=later.slug)
    due = Tenant.objects.filter(pk__in=[t.pk for t in tenants])
    rng = seeded("destroy kills")
    tally = invariants.Tally()
    env = {"KEYWARD_AWS_ENDPOINT_URL": str(settings.KEYWARD_AWS_ENDPOINT_URL)}

    kills = kill_repeatedly(
        tmp_path,
        rng,
        name="destroy",
        marks=spread_marks(rng, KILLS, 1, TENANTS - max(3, TENANTS // 4)),
        total=TENANTS,
        job=task_on_worker(
            env,
            first=lambda w: run_due_destructions.apply_async(queue=w.queue),
            resume=lambda w: run_due_destructions.apply_async(queue=w.queue),  # the beat again
        ),
        progress=lambda: due.filter(state=ServiceState.DESTROYED).count(),
        finished=lambda: not due.exclude(state=ServiceState.DESTROYED).exists(),
        after_kill=lambda: whole(tenants, tally),
    )

    kills.report()
    assert len(kills.landed) == KILLS and all(0 < n < TENANTS for n in kills.landed)
    for tenant in tenants:
        tally.add("tenant destroyed entirely", invariants.destroyed(tenant))
        tally.add("destroyed once", invariants.events_once(tenant, "key.destroyed"))
    later.refresh_from_db()
    assert later.state == ServiceState.REVOKED
    assert later.destroy_after is not None and later.destroy_after > timezone.now()
    tally.add("a tenant not yet due keeps its keys", invariants.deks_unwrap(later))
    tally.add("audit chains verify", invariants.audit_chains_verify())
    tally.add("no tenant left in a transient state", invariants.none_transient())
    tally.report(f"destroy, {KILLS} kills")
