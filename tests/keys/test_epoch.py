from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from django.db.models import F

from audit.services import Actor
from keys.runtime import RedisStateSource, reset_for_tests, state_from_db
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.support.worker import ROOT, worker_database_url


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("state_store", ["redis", "database"])
def test_revoking_reaches_another_process_within_one_second(settings, state_store) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=Actor.system("tests"))
    record = records_create(tenant=tenant, items=list(synthetic_records(2)))[0]
    env = {**os.environ, "DATABASE_URL": worker_database_url()}
    if state_store == "database":
        env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/support/decrypt_loop.py"),
            "initech",
            str(record.uid),
            "0.02",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ok", (
            process.stderr.read() if process.stderr else ""
        )
        for _ in range(5):  # the other process has the DEK cached and keeps using it
            assert process.stdout.readline().strip() == "ok"
        Tenant.objects.filter(pk=tenant.pk).update(
            state=ServiceState.REVOKED, key_epoch=F("key_epoch") + 1
        )
        if settings.REDIS_URL:
            RedisStateSource(settings.REDIS_URL).publish(str(tenant.pk))
        revoked_at = time.time()
        line = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = process.stdout.readline().strip()
            if line.startswith("denied"):
                break
        assert line.startswith("denied"), line
        _, when, error = line.split()
        assert error == "KeyRevoked"
        assert float(when) - revoked_at < 1.0
    finally:
        process.kill()
        process.wait()


def test_state_reflects_the_database(db) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=Actor.system("tests"))
    state = state_from_db(str(tenant.pk))
    assert state.status == "active" and state.current_dek_id is not None
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.DESTROYED)
    assert state_from_db(str(tenant.pk)).status == "destroyed"
    missing = state_from_db("00000000-0000-0000-0000-000000000000")
    assert missing.current_dek_id is None and missing.status != "active"


def test_a_stale_reader_never_moves_the_published_state_backwards(db, settings) -> None:
    from crypto.envelope import TenantKeyState
    from keys.runtime import RedisStateSource

    source = RedisStateSource(settings.REDIS_URL)
    tenant = tenant_create(name="Stale", slug="stale", actor=Actor.system("tests"))
    tid = str(tenant.pk)
    assert source.write(tid, TenantKeyState(epoch=2, current_dek_id=7, status="revoked"))
    # A reader that loaded the database before the revoke comes back late:
    assert not source.write(tid, TenantKeyState(epoch=1, current_dek_id=7, status="active"))
    assert not source.write(tid, TenantKeyState(epoch=2, current_dek_id=6, status="active"))
    assert source.fetch(tid) == TenantKeyState(epoch=2, current_dek_id=7, status="revoked")
    assert source.write(tid, TenantKeyState(epoch=2, current_dek_id=8, status="revoked"))


def test_an_older_state_found_after_reconnecting_is_not_trusted(db, settings) -> None:
    """Redis back from a snapshot older than a revoke: the process reads the database again."""
    from crypto.envelope import TenantKeyState

    source = RedisStateSource(settings.REDIS_URL)
    tenant = tenant_create(name="Snapshot", slug="snapshot", actor=Actor.system("tests"))
    tid = str(tenant.pk)
    active = source.fetch(tid)
    assert active.status == "active"
    Tenant.objects.filter(pk=tid).update(state=ServiceState.REVOKED, key_epoch=F("key_epoch") + 1)
    revoked = source.publish(tid)
    assert revoked.status == "revoked" and revoked.epoch == active.epoch + 1
    # What a restart from the older snapshot leaves: the active state, and every
    # connection cut.
    source.client.delete(RedisStateSource.PREFIX + tid)
    assert source.write(tid, active)
    source.client.connection_pool.disconnect()
    assert source.fetch(tid) == revoked
    raw: Any = source.client.hgetall(RedisStateSource.PREFIX + tid)  # published forward
    assert TenantKeyState(int(raw[b"epoch"]), active.current_dek_id, raw[b"status"].decode()) == (
        revoked
    )
    assert source.fetch(tid) == revoked


def test_a_publish_that_failed_is_made_again(db, settings) -> None:
    """Revoked while Redis was cut off from this process: published once it answers."""
    tenant = tenant_create(name="Cutoff", slug="cutoff", actor=Actor.system("tests"))
    tid = str(tenant.pk)
    source = RedisStateSource(settings.REDIS_URL)
    assert source.fetch(tid).status == "active"
    unreachable = RedisStateSource("redis://127.0.0.1:1/0")  # nothing listens on port 1
    Tenant.objects.filter(pk=tid).update(state=ServiceState.REVOKED, key_epoch=F("key_epoch") + 1)
    unreachable.publish(tid)
    raw: Any = source.client.hgetall(RedisStateSource.PREFIX + tid)
    assert raw[b"status"] == b"active"  # not published: the revoke is pending
    unreachable.client = source.client  # the network is back
    unreachable.publish_pending()
    raw = source.client.hgetall(RedisStateSource.PREFIX + tid)
    assert raw[b"status"] == b"revoked"
