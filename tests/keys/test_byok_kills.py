"""Enable and removal of a customer's key (LocalStack KMS), their workers killed with SIGKILL.

Enable rewraps every live DEK from the vendor key to the customer's KMS key,
removal rewraps them back; each is killed at random points of that rewrap
(marks over the DEKs moved so far, from a printed seed) and sent again to a
fresh worker by the beat's resume job (`keys.resume_key_jobs`). At every
kill each DEK is under exactly one KEK version and opens through it; at the
end the tenant is settled, every DEK is under the KEK version its state says,
every record decrypts, the audit chains verify and each step is recorded once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from audit.services import Actor
from keys.models import DataKey, KeySource, SourceKind
from keys.selectors.sources import LIVE_DEK_STATES
from keys.services.deks import dek_rotate
from keys.services.lifecycle import tenant_remove_byok
from keys.services.sources import byok_enable, byok_enable_run, key_source_register, key_source_test
from keys.tasks import resume_key_jobs, run_byok_enable, run_byok_remove
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tests.keys.conftest import CUSTOMER_ACCOUNT
from tests.support import invariants
from tests.support.aws import create_kms_key
from tests.support.faults import scale, seeded
from tests.support.kills import kill_repeatedly, spread_marks, task_on_worker

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

KILLS = scale(2, 10)
DEKS = scale(40, 200)  # data keys to move: enough for every kill to land mid-rewrap
SYSTEM = Actor.system("tests")


def grow(tenant: Tenant, deks: int) -> None:
    """Data keys to move, with records under several of them."""
    for n in range(deks):
        if n % (deks // 4) == 0:
            records_create(tenant=tenant, items=list(synthetic_records(10, seed=n, prefix=f"{n}-")))
        dek_rotate(tenant=tenant, actor=SYSTEM, reason="more keys to move")


def registered(tenant: Tenant) -> KeySource:
    key_arn = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    source = key_source_register(
        tenant=tenant,
        kind=SourceKind.AWS_KMS,
        config={"key_arn": key_arn, "role_arn": "", "external_id": "keyward-test"},
        actor=SYSTEM,
    )
    source = key_source_test(source=source, actor=SYSTEM)
    assert source.test_passed, source.test_results
    return source


def worker_env() -> dict[str, str]:
    return {"KEYWARD_AWS_ENDPOINT_URL": str(settings.KEYWARD_AWS_ENDPOINT_URL)}


def state(tenant: Tenant) -> str:
    return Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk)


def check_mid_move(tenant: Tenant, transient: str, deks: int, tally: invariants.Tally) -> None:
    """At any kill: still moving, each DEK under one version and opening through it."""
    assert state(tenant) == transient
    assert DataKey.objects.filter(tenant=tenant).count() == deks, "a DEK row was added or lost"
    tally.add("DEKs open mid-move (one KEK version each)", invariants.deks_unwrap(tenant))


def check_settled(
    tenant: Tenant, deks: int, before: dict[str, dict[str, str]], tally: invariants.Tally
) -> None:
    tally.add("DEKs under the KEK version the state says", invariants.deks_settled(tenant, deks))
    tally.add("lookup keys under the same KEK version", invariants.index_keys_settled(tenant))
    tally.add("records decrypt unchanged", invariants.records_decrypt(tenant, before))
    tally.add("audit chains verify", invariants.audit_chains_verify())
    tally.add("no tenant left in a transient state", invariants.none_transient())


def test_enable_killed_mid_rewrap_finishes_once(acme: Any, aws_env: None, tmp_path: Path) -> None:
    tenant = acme.tenant
    grow(tenant, DEKS)
    source = registered(tenant)
    before = invariants.snapshot_records(tenant)
    deks = DataKey.objects.filter(tenant=tenant).count()
    live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES)
    total = live.count()
    byok_enable(tenant=tenant, source=source, actor=Actor.for_user(acme.key_admin))
    assert state(tenant) == ServiceState.MIGRATING
    rng = seeded("byok enable kills")
    tally = invariants.Tally()

    kills = kill_repeatedly(
        tmp_path,
        rng,
        name="enable",
        marks=spread_marks(rng, KILLS, 1, total - max(3, total // 10)),
        total=total,
        job=task_on_worker(
            worker_env(),
            first=lambda w: run_byok_enable.apply_async(args=(str(source.pk),), queue=w.queue),
            resume=lambda w: resume_key_jobs.apply_async(queue=w.queue),
        ),
        progress=lambda: live.filter(kek_version__source=source).count(),
        finished=lambda: state(tenant) == ServiceState.BYOK_ACTIVE,
        after_kill=lambda: check_mid_move(tenant, ServiceState.MIGRATING, deks, tally),
    )

    kills.report()
    assert len(kills.landed) == KILLS and all(0 < n < total for n in kills.landed)
    check_settled(tenant, deks, before, tally)
    tally.add(
        "each step recorded once",
        invariants.events_once(tenant, "byok.enable", "byok.keys_moved", "byok.enabled"),
    )
    tally.report(f"enable, {KILLS} kills")


def test_removal_killed_mid_rewrap_finishes_once(acme: Any, aws_env: None, tmp_path: Path) -> None:
    tenant = acme.tenant
    grow(tenant, DEKS // 2)
    source = registered(tenant)
    byok_enable(tenant=tenant, source=source, actor=Actor.for_user(acme.key_admin))
    byok_enable_run(source_id=str(source.pk))
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    for _ in range(DEKS - DEKS // 2):  # and some made under the customer's key
        dek_rotate(tenant=tenant, actor=SYSTEM, reason="more keys to move")
    before = invariants.snapshot_records(tenant)
    deks = DataKey.objects.filter(tenant=tenant).count()
    live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES)
    total = live.count()
    tenant_remove_byok(tenant=tenant, actor=Actor.for_user(acme.owner))
    assert state(tenant) == ServiceState.MIGRATING_BACK
    rng = seeded("byok removal kills")
    tally = invariants.Tally()

    kills = kill_repeatedly(
        tmp_path,
        rng,
        name="removal",
        marks=spread_marks(rng, KILLS, 1, total - max(3, total // 10)),
        total=total,
        job=task_on_worker(
            worker_env(),
            first=lambda w: run_byok_remove.apply_async(args=(str(tenant.pk),), queue=w.queue),
            resume=lambda w: resume_key_jobs.apply_async(queue=w.queue),
        ),
        progress=lambda: live.filter(kek_version__source__kind=SourceKind.LOCAL).count(),
        finished=lambda: state(tenant) == ServiceState.VENDOR_MANAGED,
        after_kill=lambda: check_mid_move(tenant, ServiceState.MIGRATING_BACK, deks, tally),
    )

    kills.report()
    assert len(kills.landed) == KILLS and all(0 < n < total for n in kills.landed)
    check_settled(tenant, deks, before, tally)
    tally.add(
        "each step recorded once",
        invariants.events_once(tenant, "byok.remove", "byok.keys_moved_back", "byok.removed"),
    )
    tally.report(f"removal, {KILLS} kills")
