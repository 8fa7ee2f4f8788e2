"""A key store lost in the middle of a key move, through a fault proxy.

Enable (every DEK rewrapped under the customer's key), a confirmed rotation's
rewrap, a forced rotation (a new key made on the KMIP server, then rewrapped)
and a removal (back under the vendor key) each run with the store cut at a
random point of their traffic (`trip_after`), the request lost or only its
answer, one or more times. After each cut and at the end: every data key
unwraps, under the key version its row names, to the bytes it had before (so
none was wrapped twice or left out); the job, run again as the task and the
beat's resume do, finishes once; the trail says it stopped and how it ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.circuit import reset_circuits
from keys.errors import KeyActionRefused
from keys.models import DataKey, KekState, KeySource, SourceKind
from keys.providers.base import KeyUnavailable
from keys.registry import provider_for
from keys.runtime import reset_for_tests
from keys.services.deks import dek_rotate
from keys.services.health import key_health_check
from keys.services.lifecycle import tenant_remove_byok
from keys.services.rotation import kek_confirm_rotation, kek_rotate_now
from keys.tasks import run_byok_enable, run_byok_remove, run_kek_rewrap
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.keys.faultstores import StoreSetup, dek_materials, kek_versions, proxied_store, state
from tests.support.faults import FULL, scale, seeded

pytestmark = [
    pytest.mark.faults,
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning"),
]
SYSTEM = Actor.system("tests")


@dataclass
class Job:
    run: Callable[[], Any]  # the task, called as the worker (and the beat's resume) calls it
    source: KeySource  # the key source the job moves the data keys under
    stopped: str  # the trail's action when it stops on an unreachable store
    finished: tuple[str, ...]  # the actions that end it, once each
    done: ServiceState


def _enable(store: StoreSetup, acme: Any) -> Job:
    source = store.enable(acme, run=False)
    assert state(acme.tenant) == ServiceState.MIGRATING
    return Job(
        lambda: run_byok_enable(str(source.pk)),
        source,
        "byok.enable",
        ("byok.keys_moved", "byok.enabled"),
        ServiceState.BYOK_ACTIVE,
    )


def _confirmed_rotation(store: StoreSetup, acme: Any) -> Job:
    source = store.enable(acme)
    assert store.rotate is not None
    store.rotate(acme)
    assert key_health_check(tenant=acme.tenant) == "rotation_pending"
    kek_confirm_rotation(tenant=acme.tenant, actor=Actor.for_user(acme.owner))
    return _rewrap(source)


def _forced_rotation(store: StoreSetup, acme: Any) -> Job:
    source = store.enable(acme)
    actor = Actor.for_user(acme.owner)
    # Lost while asking for the new key: refused, and nothing changed.
    store.proxy.refuse()
    store.proxy.cut()
    with pytest.raises(KeyActionRefused, match="refused the rotation"):
        kek_rotate_now(tenant=acme.tenant, actor=actor)
    store.proxy.heal()
    assert state(acme.tenant) == ServiceState.BYOK_ACTIVE
    assert not source.versions.filter(state=KekState.PENDING).exists()
    kek_rotate_now(tenant=acme.tenant, actor=actor)
    kek_confirm_rotation(tenant=acme.tenant, actor=actor)
    return _rewrap(source)


def _rewrap(source: KeySource) -> Job:
    assert state(source.tenant) == ServiceState.REWRAPPING
    source.refresh_from_db()
    return Job(
        lambda: run_kek_rewrap(str(source.pk)),
        source,
        "kek.rewrap",
        ("kek.rotation_done",),
        ServiceState.BYOK_ACTIVE,
    )


def _removal(store: StoreSetup, acme: Any) -> Job:
    store.enable(acme)
    tenant_remove_byok(tenant=acme.tenant, actor=Actor.for_user(acme.owner))
    local = KeySource.objects.filter(tenant=acme.tenant, kind=SourceKind.LOCAL).first()
    assert local is not None  # the vendor source the tenant started with, retired
    return Job(
        lambda: run_byok_remove(str(acme.tenant.pk)),
        local,
        "byok.remove",
        ("byok.keys_moved_back", "byok.removed"),
        ServiceState.VENDOR_MANAGED,
    )


JOBS: dict[str, Callable[[StoreSetup, Any], Job]] = {
    "enable": _enable,
    "confirmed_rotation": _confirmed_rotation,
    "forced_rotation": _forced_rotation,
    "removal": _removal,
}
_ALL = [
    ("enable", "aws_kms"),
    ("enable", "kmip"),
    ("enable", "azure_keyvault"),
    ("confirmed_rotation", "aws_kms"),
    ("confirmed_rotation", "azure_keyvault"),
    ("forced_rotation", "kmip"),  # KMIP: a new key made on the server on request
    ("removal", "aws_kms"),
    ("removal", "kmip"),
    ("removal", "azure_keyvault"),
]
# `make test`: each job once, on one store each; `make faults`: every job on every store.
CASES = _ALL if FULL else [_ALL[1], _ALL[3], _ALL[5], _ALL[8]]


def _trail(tenant: Any) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(tenant=tenant).order_by("seq").values_list("action", "outcome")
    )


def _unmoved(job: Job) -> int:
    """Live data keys not yet under the job's key source (and version)."""
    deks = DataKey.objects.filter(tenant=job.source.tenant).exclude(
        state__in=["retired", "destroyed"]
    )
    if job.source.kind == SourceKind.LOCAL:
        return deks.exclude(kek_version__source=job.source).count()
    target = provider_for(KeySource.objects.get(pk=job.source.pk)).current_version()
    return deks.exclude(
        kek_version__source=job.source, kek_version__provider_version=target
    ).count()


def materials_once_answering(tenant: Any, seconds: float = 30.0) -> dict[int, bytes]:
    """`dek_materials` once the healed store answers again.

    Right after a heal, calls on connections the cut left half-open can still
    fail, and five in a row open the endpoint's circuit again: what is checked
    here is that every data key unwraps to the same bytes, not how soon the
    store is back (test_keystore_faults covers the recovery).
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            return dek_materials(tenant)
        except KeyUnavailable:
            if time.monotonic() > deadline:
                raise
            reset_circuits()
            time.sleep(0.5)


@pytest.mark.parametrize(("job_name", "kind"), CASES)
def test_a_store_lost_mid_job_leaves_every_key_wrapped_once_and_the_job_finishes_once(
    job_name: str, kind: str, acme: Any, request: Any, settings: Any
) -> None:
    rng = seeded(f"job faults {job_name} {kind}")
    tenant = acme.tenant
    records = records_create(tenant=tenant, items=list(synthetic_records(6)))
    for _ in range(scale(5, 20) - 1):  # more data keys to move
        dek_rotate(tenant=tenant, actor=SYSTEM, reason="more keys")
    with proxied_store(kind, request, settings) as store:
        job = JOBS[job_name](store, acme)
        before = dek_materials(tenant)
        versions_before = kek_versions(tenant)
        cuts = 0
        for _ in range(scale(1, 4)):
            remaining = _unmoved(job)
            if remaining == 0:
                break
            # Each data key left costs at least one request: a trip within that
            # many chunks lands inside the job.
            store.proxy.trip_after(chunks=rng.randint(1, remaining), deliver=rng.random() < 0.5)
            with pytest.raises(KeyUnavailable):
                job.run()
            assert store.proxy.tripped
            cuts += 1
            assert state(tenant) not in (job.done, ServiceState.REVOKED)
            store.proxy.heal()
            # The cut failed several concurrent calls, which may have opened the
            # endpoint's circuit: its back-off (seconds, with jitter) has passed.
            reset_circuits()
            # Stopped mid-way: every DEK under the old key or the new one, and
            # each still unwraps to the very same bytes.
            assert materials_once_answering(tenant) == before
            assert kek_versions(tenant) <= versions_before | _versions(job.source)
        print(f"{job_name} on {kind}: {cuts} cuts, faults {dict(store.proxy.faults)}")
        job.run()  # the store is back: the retry (or the beat's resume) finishes it
        assert state(tenant) == job.done
        assert _unmoved(job) == 0
        assert dek_materials(tenant) == before
        trail = _trail(tenant)
        job.run()  # once more, as a duplicate delivery would: nothing changes
        assert _trail(tenant) == trail
        assert state(tenant) == job.done
        reset_for_tests()  # a restart: nothing cached, every record decrypts
        for row in Record.objects.select_related("sealed").filter(pk__in=[r.pk for r in records]):
            assert record_fields(tenant, row)
    # The trail: the move stopped (one line per outage; stops with nothing
    # between them are one outage), then ended once.
    stops = [a for a, o in trail if (a, o) == (job.stopped, "failure")]
    assert 1 <= len(stops) <= cuts, trail
    for action in job.finished:
        assert [a for a, _ in trail].count(action) == 1, (action, trail)
    assert ("key.revoked", "denied") not in trail


def _versions(source: KeySource) -> set[str]:
    return set(source.versions.values_list("provider_version", flat=True))
