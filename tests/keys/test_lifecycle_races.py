"""Races in the lifecycle, on PostgreSQL with real concurrent connections."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import connections

from audit.services import Actor
from keys.models import DataKey, KeySource, SourceKind
from keys.registry import provider_for
from keys.services.deks import dek_rotate
from keys.services.health import key_health_check
from keys.services.rotation import kek_confirm_rotation, kek_rewrap_run
from keys.tasks import resume_key_jobs, run_kek_rewrap
from tenants.models import ServiceState, Tenant
from tests.keys.conftest import CUSTOMER_ACCOUNT
from tests.support import invariants
from tests.support.aws import create_kms_key
from tests.support.faultproxy import FaultProxy
from tests.support.faults import scale, seeded
from tests.support.kills import kill_repeatedly, spread_marks, task_on_worker


def move_alias(byok: Any) -> str:
    new_key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    byok["kms"].update_alias(AliasName=byok["alias"], TargetKeyId=new_key.rsplit("/", 1)[1])
    assert key_health_check(tenant=byok["acme"].tenant) == "rotation_pending"
    return new_key


@pytest.mark.django_db(transaction=True)
def test_two_administrators_confirm_at_once_one_wins(byok) -> None:
    tenant = byok["acme"].tenant
    move_alias(byok)
    barrier = threading.Barrier(2)
    answers: list[str] = []

    def confirm(user: Any) -> None:
        try:
            barrier.wait()
            answers.append(kek_confirm_rotation(tenant=tenant, actor=Actor.for_user(user)))
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=confirm, args=(byok["acme"].owner,)),
        threading.Thread(target=confirm, args=(byok["acme"].key_admin,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(a.startswith("Confirmed") for a in answers) == 1
    assert any("nothing to do" in a or "confirmed already" in a for a in answers)
    tenant.refresh_from_db()
    assert tenant.state == ServiceState.REWRAPPING


def test_a_rewrap_killed_midway_resumes_and_every_dek_ends_under_one_version(
    byok, monkeypatch
) -> None:
    tenant = byok["acme"].tenant
    for _ in range(5):  # more DEKs to move
        dek_rotate(tenant=tenant, actor=Actor.system("tests"), reason="more keys")
    new_key = move_alias(byok)
    kek_confirm_rotation(tenant=tenant, actor=Actor.for_user(byok["acme"].owner))
    source = KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS)
    provider = provider_for(source)
    real_wrap = provider.wrap
    calls = {"n": 0}

    def dying_wrap(dek: bytes, context: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("worker lost")
        return real_wrap(dek, context)

    monkeypatch.setattr(provider, "wrap", dying_wrap)
    with pytest.raises(RuntimeError):
        kek_rewrap_run(source_id=str(source.pk))
    monkeypatch.setattr(provider, "wrap", real_wrap)
    versions = list(
        DataKey.objects.filter(tenant=tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    )
    assert set(versions) == {byok["key_arn"], new_key}  # mid-way: each DEK under exactly one
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    versions = list(
        DataKey.objects.filter(tenant=tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    )
    assert set(versions) == {new_key} and len(versions) == 6
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.BYOK_ACTIVE


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_rewrap_resumes_once_restarted(byok, settings, tmp_path) -> None:
    """Killed at random points (one kill in `make test`, ten in `make faults`),
    each time sent again by the beat's resume job (`keys.resume_key_jobs`)."""
    tenant = byok["acme"].tenant
    for _ in range(150):  # enough data keys for the rewrap to take a while
        dek_rotate(tenant=tenant, actor=Actor.system("tests"), reason="more keys")
    new_key = move_alias(byok)
    kek_confirm_rotation(tenant=tenant, actor=Actor.for_user(byok["acme"].owner))
    source = KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS)
    deks = DataKey.objects.filter(tenant=tenant)
    count = deks.count()
    before = invariants.snapshot_records(tenant)
    rng = seeded("confirmed rotation rewrap kills")
    kills = scale(1, 10)

    def one_version_each() -> None:
        # Every DEK under exactly one of the two versions while stopped; a kill
        # that lands after the last DEK but before the state changes finds
        # them all under the new one (the rewrap runs several at a time).
        assert set(deks.values_list("kek_version__provider_version", flat=True)) <= {
            byok["key_arn"],
            new_key,
        }
        assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.REWRAPPING
        invariants.deks_unwrap(tenant)

    # The rewrap makes its key-store calls several at a time and commits them a
    # batch at a time: against a local LocalStack it ends between two polls, in
    # two commits. The workers write ten data keys per batch and reach KMS
    # through a proxy that delays each request, as a key store across a network
    # would, so that every kill lands inside the rewrap.
    upstream = urlsplit(str(settings.KEYWARD_AWS_ENDPOINT_URL))
    with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80) as proxy:
        proxy.add_latency(0.05)
        landed = kill_repeatedly(
            tmp_path,
            rng,
            name="kek-rewrap",
            marks=spread_marks(rng, kills, 1, count - 15),
            total=count,
            job=task_on_worker(
                {"KEYWARD_AWS_ENDPOINT_URL": proxy.url("http"), "KEYWARD_KEK_REWRAP_BATCH": "10"},
                first=lambda w: run_kek_rewrap.apply_async(args=(str(source.pk),), queue=w.queue),
                resume=lambda w: resume_key_jobs.apply_async(queue=w.queue),
            ),
            progress=lambda: deks.filter(kek_version__provider_version=new_key).count(),
            finished=lambda: Tenant.objects.get(pk=tenant.pk).state == ServiceState.BYOK_ACTIVE,
            after_kill=one_version_each,
        )
    landed.report()
    assert len(landed.landed) == kills and all(0 < n < count for n in landed.landed)
    assert set(deks.values_list("kek_version__provider_version", flat=True)) == {new_key}
    invariants.deks_settled(tenant, count)
    invariants.records_decrypt(tenant, before)
    invariants.audit_chains_verify()
    invariants.none_transient()
