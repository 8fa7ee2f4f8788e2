from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from typing import Any

import pytest
from django.core import mail
from django.db import connection

import objects.migration
import objects.migration as engine
from audit.models import AuditEvent
from crypto.segments import encrypt_stream
from objects.keyring import dek_material
from objects.locations import ensured, storage_for
from objects.migration import (
    RUNNING_ELSEWHERE,
    MigrationRefused,
    _Exclusive,
    migration_run,
    migration_start,
)
from objects.models import (
    Direction,
    ItemState,
    Location,
    MigrationState,
    StoredObject,
    blob_name,
    key_of_blob,
)
from objects.selectors import migration_progress, objects_usage
from objects.services import object_binding, object_open, object_put
from tenants.models import ServiceState
from tenants.states import ServicePaused
from tests.objects.conftest import (
    MIGRATING,
    MIGRATING_BACK,
    active_dek,
    new_target_dek,
    random_blobs,
    set_state,
)


def read_all(tenant: Any, key: str) -> bytes:
    _obj, stream = object_open(tenant=tenant, key=key)
    return b"".join(stream)


def with_objects(tenant: Any, n: int = 30) -> dict[str, bytes]:
    blobs = random_blobs(n)
    for key, data in blobs.items():
        object_put(tenant=tenant, key=key, chunks=[data])
    return blobs


def keys_at(tenant: Any, location: str) -> list[str]:
    """The object keys whose blobs (any version) are in `location`."""
    return sorted(key_of_blob(o.key) for o in storage_for(tenant, location).list())


def blob_of(tenant: Any, key: str) -> str:
    return StoredObject.objects.get(tenant=tenant, key=key).blob


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> Any:
    """What the engine tells keys when a move ends: (tenant id, direction, succeeded)."""
    seen: list[tuple[str, str, bool]] = []
    told = engine.data_move_finished

    def receiver(*, tenant_id: str, direction: str, succeeded: bool) -> None:
        seen.append((tenant_id, direction, succeeded))
        told(tenant_id=tenant_id, direction=direction, succeeded=succeeded)

    monkeypatch.setattr(engine, "data_move_finished", receiver)
    return seen


@pytest.mark.django_db(transaction=True)
def test_a_move_to_dedicated_and_back_keeps_every_object(acme, finished) -> None:
    tenant = acme.tenant
    blobs = with_objects(tenant)
    old = active_dek(tenant)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    assert migration.total == 30 and migration.bytes_total == sum(map(len, blobs.values()))
    assert migration.items.filter(state=ItemState.PENDING).count() == 30
    with pytest.raises(ServicePaused):
        object_put(tenant=tenant, key="late", chunks=[b"x"])

    assert migration_run(str(migration.pk)) == MigrationState.DONE
    migration.refresh_from_db()
    assert (migration.copied, migration.verified, migration.deleted) == (30, 30, 30)
    assert migration.percent == 100 and migration.finished is not None
    assert finished == [(str(tenant.pk), migration.direction, True)]
    assert keys_at(tenant, Location.SHARED) == []
    assert keys_at(tenant, Location.DEDICATED) == sorted(blobs)
    rows = StoredObject.objects.filter(tenant=tenant)
    assert set(rows.values_list("location", "dek_id")) == {(Location.DEDICATED, target.pk)}
    assert old.pk != target.pk
    for key, data in blobs.items():
        assert read_all(tenant, key) == data
    assert AuditEvent.objects.filter(tenant=tenant, action="objects.migration_done").count() == 1
    assert migration_run(str(migration.pk)) == MigrationState.DONE  # a no-op now
    assert AuditEvent.objects.filter(tenant=tenant, action="objects.migration_done").count() == 1
    assert len(finished) == 1

    # And back, under a vendor-managed DEK.
    set_state(tenant, ServiceState.VENDOR_MANAGED)
    back_dek = new_target_dek(tenant)
    set_state(tenant, MIGRATING_BACK)
    back = migration_start(tenant=tenant, direction=Direction.TO_SHARED, target_dek_id=back_dek.pk)
    assert migration_run(str(back.pk)) == MigrationState.DONE
    assert keys_at(tenant, Location.DEDICATED) == []
    assert keys_at(tenant, Location.SHARED) == sorted(blobs)
    assert set(rows.values_list("location", "dek_id")) == {(Location.SHARED, back_dek.pk)}
    for key, data in blobs.items():
        assert read_all(tenant, key) == data
    usage = objects_usage(tenant)
    assert usage.count == 30 and [r.label for r in usage.by_location] == ["shared"]


@pytest.mark.django_db(transaction=True)
def test_reads_serve_objects_from_the_source_until_the_switch(acme, monkeypatch) -> None:
    tenant = acme.tenant
    blobs = with_objects(tenant, 5)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    seen: dict[str, bytes] = {}
    real_switch = objects.migration._Run.switch

    def reading_switch(self: Any) -> None:
        # Everything copied and verified, nothing switched: rows still say shared.
        for key in blobs:
            assert StoredObject.objects.get(tenant=tenant, key=key).location == Location.SHARED
            seen[key] = read_all(tenant, key)
        assert migration_progress(tenant) is not None
        real_switch(self)

    monkeypatch.setattr(objects.migration._Run, "switch", reading_switch)
    assert migration_run(str(migration.pk)) == MigrationState.DONE
    assert seen == blobs
    assert migration_progress(tenant) is None


@pytest.mark.django_db(transaction=True)
def test_a_corrupt_copy_fails_the_move_and_keeps_everything(acme, monkeypatch, finished) -> None:
    tenant = acme.tenant
    blobs = with_objects(tenant, 10)
    before = list(
        StoredObject.objects.filter(tenant=tenant).values_list("key", "location", "dek_id")
    )
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    victim = sorted(blobs)[3]
    real_verify = objects.migration._Run.verify

    def corrupting_verify(self: Any) -> None:
        dedicated = storage_for(tenant, Location.DEDICATED)
        name = blob_of(tenant, victim)
        blob = bytearray(b"".join(dedicated.get(name)))
        blob[-40] ^= 1  # one bit in the last segment
        dedicated.put(name, [bytes(blob)])
        real_verify(self)

    monkeypatch.setattr(objects.migration._Run, "verify", corrupting_verify)
    assert migration_run(str(migration.pk)) == MigrationState.FAILED
    migration.refresh_from_db()
    assert victim in migration.error and "does not authenticate" in migration.error
    assert migration.deleted == 0 and migration.finished is not None
    assert keys_at(tenant, Location.SHARED) == sorted(blobs)  # sources kept
    after = list(
        StoredObject.objects.filter(tenant=tenant).values_list("key", "location", "dek_id")
    )
    assert after == before  # rows untouched
    for key, data in blobs.items():
        assert read_all(tenant, key) == data
    event = AuditEvent.objects.get(tenant=tenant, action="objects.migration_failed")
    assert event.outcome == "failure" and victim in event.reason
    assert finished == [(str(tenant.pk), migration.direction, False)]
    assert any("moving your objects stopped" in m.subject for m in mail.outbox)
    monkeypatch.setattr(objects.migration._Run, "verify", real_verify)
    assert migration_run(str(migration.pk)) == MigrationState.FAILED  # stays failed


@pytest.mark.django_db(transaction=True)
def test_a_blob_no_row_names_in_the_target_does_not_stop_the_move(acme) -> None:
    # What a write that failed before its row was committed leaves behind: not the
    # tenant's data (never acknowledged), so it must not keep the tenant paused.
    tenant = acme.tenant
    with_objects(tenant, 3)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    ensured(tenant, Location.DEDICATED).put("stray", [b"not ours"])
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    assert migration_run(str(migration.pk)) == MigrationState.DONE
    assert len(keys_at(tenant, Location.SHARED)) == 0
    assert not StoredObject.objects.filter(tenant=tenant, key="stray").exists()


@pytest.mark.django_db(transaction=True)
def test_a_source_that_does_not_match_the_manifest_fails(acme) -> None:
    tenant = acme.tenant
    blobs = with_objects(tenant, 3)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    key = sorted(blobs)[0]
    migration.items.filter(key=key).update(sha256=hashlib.sha256(b"other").hexdigest())
    assert migration_run(str(migration.pk)) == MigrationState.FAILED
    assert "checksum" in type(migration).objects.get(pk=migration.pk).error
    assert len(keys_at(tenant, Location.SHARED)) == 3


@pytest.mark.django_db(transaction=True)
def test_a_move_stops_when_the_tenant_leaves_migrating_and_resumes_later(acme) -> None:
    tenant = acme.tenant
    blobs = with_objects(tenant, 4)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    set_state(tenant, ServiceState.DEGRADED)
    assert migration_run(str(migration.pk)) == MigrationState.STOPPED
    assert keys_at(tenant, Location.SHARED) == sorted(blobs)
    set_state(tenant, MIGRATING)
    assert migration_run(str(migration.pk)) == MigrationState.DONE
    assert keys_at(tenant, Location.DEDICATED) == sorted(blobs)


@pytest.mark.django_db(transaction=True)
def test_start_is_refused_unless_migrating_and_is_idempotent(acme, globex) -> None:
    tenant = acme.tenant
    with_objects(tenant, 2)
    target = new_target_dek(tenant)
    with pytest.raises(MigrationRefused):
        migration_start(tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk)
    set_state(tenant, MIGRATING)
    with pytest.raises(MigrationRefused):  # another tenant's DEK
        migration_start(
            tenant=tenant,
            direction=Direction.TO_DEDICATED,
            target_dek_id=active_dek(globex.tenant).pk,
        )
    first = migration_start(
        tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk
    )
    again = migration_start(
        tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk
    )
    assert again.pk == first.pk and first.items.count() == 2
    with pytest.raises(MigrationRefused):
        migration_start(tenant=tenant, direction=Direction.TO_SHARED, target_dek_id=target.pk)


@pytest.mark.django_db(transaction=True)
def test_a_copy_the_move_did_not_write_is_copied_again(acme, monkeypatch) -> None:
    """A stale or foreign copy authenticates under the target DEK but has another salt:
    verification does not take it, the object is copied again and verified."""
    tenant = acme.tenant
    blobs = with_objects(tenant, 6)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    victim = sorted(blobs)[2]
    real_verify = objects.migration._Run.verify
    planted: list[str] = []

    def planting_verify(self: Any) -> None:
        if not planted:
            # Same size, valid under the target DEK and binding, other plaintext.
            wrong = os.urandom(len(blobs[victim]))
            version = StoredObject.objects.get(tenant=tenant, key=victim).version
            pieces = encrypt_stream(
                [wrong], dek=dek_material(str(tenant.pk), target.pk), dek_id=target.pk,
                binding=object_binding(str(tenant.pk), victim, version),
            )  # fmt: skip
            ensured(tenant, Location.DEDICATED).put(blob_name(victim, version), pieces)
            planted.append(victim)
        real_verify(self)

    monkeypatch.setattr(objects.migration._Run, "verify", planting_verify)
    assert migration_run(str(migration.pk)) == MigrationState.DONE
    assert planted == [victim]
    migration.refresh_from_db()
    assert (migration.copied, migration.verified, migration.deleted) == (6, 6, 6)
    assert migration.bytes_copied == migration.bytes_total
    for key, data in blobs.items():
        assert read_all(tenant, key) == data


@pytest.mark.django_db(transaction=True)
def test_a_second_run_of_a_running_migration_returns_at_once(acme, monkeypatch) -> None:
    tenant = acme.tenant
    blobs = with_objects(tenant, 8)
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED,
                                target_dek_id=target.pk)  # fmt: skip
    copying, second_done = threading.Event(), threading.Event()
    real_copy = objects.migration._Run.copy

    def held_copy(self: Any) -> None:
        copying.set()
        assert second_done.wait(30)
        real_copy(self)

    monkeypatch.setattr(objects.migration._Run, "copy", held_copy)
    results: list[str] = []

    def first() -> None:
        try:
            results.append(migration_run(str(migration.pk)))
        finally:
            connection.close()

    runner = threading.Thread(target=first)
    runner.start()
    try:
        assert copying.wait(30)
        started = time.monotonic()
        assert migration_run(str(migration.pk)) == RUNNING_ELSEWHERE
        assert time.monotonic() - started < 2
        migration.refresh_from_db()
        assert migration.state == MigrationState.COPYING and migration.copied == 0
    finally:
        second_done.set()
        runner.join(60)
    assert results == [MigrationState.DONE]
    migration.refresh_from_db()
    assert (migration.copied, migration.verified, migration.deleted) == (8, 8, 8)
    assert keys_at(tenant, Location.SHARED) == []
    assert keys_at(tenant, Location.DEDICATED) == sorted(blobs)
    for key, data in blobs.items():
        assert read_all(tenant, key) == data
    assert AuditEvent.objects.filter(tenant=tenant, action="objects.migration_done").count() == 1
    # The lock went with the run: a run sent now finds the migration done.
    assert migration_run(str(migration.pk)) == MigrationState.DONE


def test_without_postgresql_a_file_lock_keeps_runs_apart(settings, tmp_path) -> None:
    settings.DATA_DIR = tmp_path
    migration_id = uuid.uuid4()
    first, second = _Exclusive(migration_id), _Exclusive(migration_id)
    assert first._acquire_flock()
    assert not second._acquire_flock()
    other = _Exclusive(uuid.uuid4())
    assert other._acquire_flock()  # another migration's lock is another file
    other.release()
    first.release()
    assert second._acquire_flock()
    second.release()
