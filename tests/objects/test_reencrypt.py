"""Objects follow DEK rotation: the re-encryption job rewrites them under the current DEK."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from audit.models import AuditEvent
from keys.models import DataKey, DekState
from objects.locations import storage_for
from objects.models import Location, StoredObject
from objects.services import (
    ObjectMismatch,
    object_open,
    object_put,
    object_reencrypt,
    objects_load,
)
from records.models import JobState, ReencryptionJob
from records.reencryption import reencryption_run
from records.services import records_create
from records.synthetic import synthetic_records
from tests.objects.conftest import active_dek, new_target_dek, random_blobs

pytestmark = pytest.mark.django_db(transaction=True)


def read(tenant: Any, key: str) -> bytes:
    _obj, stream = object_open(tenant=tenant, key=key)
    return b"".join(stream)


def stored_names(tenant: Any) -> set[str]:
    return {o.key for o in storage_for(tenant, Location.SHARED).list()}


def with_old_objects(tenant: Any, n: int = 12) -> tuple[dict[str, bytes], DataKey]:
    """Objects and a few records under the current DEK, then a rotation."""
    blobs = random_blobs(n, low=100, high=200_000)
    for key, data in blobs.items():
        object_put(tenant=tenant, key=key, chunks=[data])
    records_create(tenant=tenant, items=list(synthetic_records(20)))
    old = active_dek(tenant)
    new_target_dek(tenant)
    return blobs, old


def run_job(tenant: Any) -> ReencryptionJob:
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=active_dek(tenant), total=20)
    return reencryption_run(job_id=str(job.pk))


def test_the_job_rewrites_objects_under_the_new_dek_and_retires_the_old(acme: Any) -> None:
    tenant = acme.tenant
    blobs, old = with_old_objects(tenant)
    before = {
        o.key: (o.sha256, o.updated, o.blob) for o in StoredObject.objects.filter(tenant=tenant)
    }
    job = run_job(tenant)
    assert job.state == JobState.DONE
    new = active_dek(tenant)
    rows = {o.key: o for o in StoredObject.objects.filter(tenant=tenant)}
    assert {o.dek_id for o in rows.values()} == {new.pk}
    for key, data in blobs.items():
        assert read(tenant, key) == data
        sha256, updated, blob = before[key]
        # Same content: same ETag and Last-Modified; a new version, the old one deleted.
        assert rows[key].sha256 == sha256 == hashlib.sha256(data).hexdigest()
        assert rows[key].updated == updated and rows[key].blob != blob
    assert stored_names(tenant) == {o.blob for o in rows.values()}
    old.refresh_from_db()
    assert old.state == DekState.RETIRED and bytes(old.wrapped) == b""
    done = AuditEvent.objects.get(tenant=tenant, action="records.reencrypt.done")
    assert done.details["objects"] == len(blobs) and done.details["objects_not_reencrypted"] == []


def test_a_corrupt_object_is_left_as_it_is_and_keeps_its_dek(acme: Any) -> None:
    tenant = acme.tenant
    blobs, old = with_old_objects(tenant, n=5)
    victim = sorted(blobs)[2]
    row = StoredObject.objects.get(tenant=tenant, key=victim)
    shared = storage_for(tenant, Location.SHARED)
    damaged = bytearray(b"".join(shared.get(row.blob)))
    damaged[-30] ^= 1
    shared.put(row.blob, iter([bytes(damaged)]))
    job = run_job(tenant)
    assert job.state == JobState.DONE
    assert StoredObject.objects.get(tenant=tenant, key=victim).dek_id == old.pk
    assert StoredObject.objects.filter(tenant=tenant, dek=old).count() == 1
    old.refresh_from_db()
    assert old.state == DekState.RETIRING and bytes(old.wrapped)  # still needed
    done = AuditEvent.objects.get(tenant=tenant, action="records.reencrypt.done")
    assert done.details["objects_not_reencrypted"] == [victim]
    for key in set(blobs) - {victim}:
        assert read(tenant, key) == blobs[key]


def test_a_crash_in_the_middle_loses_nothing_and_a_rerun_finishes(
    acme: Any, monkeypatch: Any
) -> None:
    from objects.storage.filesystem import FilesystemStorage

    tenant = acme.tenant
    blobs, old = with_old_objects(tenant, n=10)
    real_put = FilesystemStorage.put
    puts: list[str] = []

    def put_then_die_at_the_fifth(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        stored = real_put(self, key, *args, **kwargs)
        puts.append(key)
        if len(puts) == 5:  # killed with the new version stored, before its row commits
            raise SystemExit("killed")
        return stored

    monkeypatch.setattr(FilesystemStorage, "put", put_then_die_at_the_fifth)
    with pytest.raises(SystemExit):
        run_job(tenant)
    monkeypatch.undo()
    for key, data in blobs.items():  # every object reads, rewritten or not
        assert read(tenant, key) == data
    assert StoredObject.objects.filter(tenant=tenant, dek=old).count() == 6
    assert puts[4] in stored_names(tenant)  # the orphaned new version: no row names it
    ReencryptionJob.objects.filter(tenant=tenant).delete()
    assert run_job(tenant).state == JobState.DONE
    assert not StoredObject.objects.filter(tenant=tenant, dek=old).exists()
    for key, data in blobs.items():
        assert read(tenant, key) == data


def test_a_stale_or_current_version_is_left_alone(acme: Any) -> None:
    tenant = acme.tenant
    first = object_put(tenant=tenant, key="k", chunks=[b"first"])
    assert not object_reencrypt(tenant=tenant, key="k", version=first.version)  # current DEK
    new_target_dek(tenant)
    second = object_put(tenant=tenant, key="k", chunks=[b"second"])  # written meanwhile
    assert not object_reencrypt(tenant=tenant, key="k", version=first.version)
    assert not object_reencrypt(tenant=tenant, key="gone", version=first.version)
    assert StoredObject.objects.get(tenant=tenant, key="k").version == second.version
    assert read(tenant, "k") == b"second"


def test_a_copy_that_is_not_what_its_row_says_is_refused(acme: Any) -> None:
    tenant = acme.tenant
    obj = object_put(tenant=tenant, key="k", chunks=[b"the content"])
    new_target_dek(tenant)
    # Authentic ciphertext, but the row promises other content (a lost row update).
    StoredObject.objects.filter(pk=obj.pk).update(sha256="0" * 64)
    before = stored_names(tenant)
    with pytest.raises(ObjectMismatch):
        object_reencrypt(tenant=tenant, key="k", version=obj.version)
    assert stored_names(tenant) == before  # the new version was not kept
    assert StoredObject.objects.get(pk=obj.pk).version == obj.version


def test_an_object_written_before_versions_is_rewritten_into_one(acme: Any) -> None:
    tenant = acme.tenant
    objects_load(tenant, [("legacy", b"old format")], versioned=False)
    new_target_dek(tenant)
    assert object_reencrypt(tenant=tenant, key="legacy", version="")
    row = StoredObject.objects.get(tenant=tenant, key="legacy")
    assert row.version and row.dek_id == active_dek(tenant).pk
    assert read(tenant, "legacy") == b"old format"
    assert stored_names(tenant) == {row.blob}


def test_the_keys_page_counts_objects_per_data_key(acme: Any) -> None:
    from django.urls import reverse

    from tests.conftest import login

    tenant = acme.tenant
    with_old_objects(tenant, n=3)
    page = login(acme.viewer).get(reverse("keys:overview", args=["acme"])).content.decode()
    assert "20 records and 3 objects still depend on older data keys" in page
    assert '<th scope="col">Objects</th>' in page
    run_job(tenant)
    page = login(acme.viewer).get(reverse("keys:overview", args=["acme"])).content.decode()
    assert "0 records still depend on older data keys" in page
