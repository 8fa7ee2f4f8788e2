from __future__ import annotations

import hashlib
import os
import re

import pytest

from crypto.envelope import KeyRevoked
from crypto.segments import ObjectUnauthentic
from objects.locations import storage_for
from objects.models import Location, StoredObject
from objects.services import (
    ObjectMismatch,
    ObjectNotFound,
    ObjectTooLarge,
    object_delete,
    object_head,
    object_open,
    object_put,
)
from objects.storage import InvalidKey
from tenants.models import ServiceState
from tenants.states import ServicePaused
from tests.objects.conftest import active_dek, chunks, set_state


def read_all(tenant, key: str) -> bytes:
    _obj, stream = object_open(tenant=tenant, key=key)
    return b"".join(stream)


def test_put_then_open_round_trips_and_records_the_checksum(acme) -> None:
    data = os.urandom(200_000)
    obj = object_put(tenant=acme.tenant, key="a/b.pdf", chunks=chunks(data, 7000),
                     content_type="application/pdf")  # fmt: skip
    assert obj.size == len(data) and obj.sha256 == hashlib.sha256(data).hexdigest()
    assert obj.location == Location.SHARED and obj.dek == active_dek(acme.tenant)
    assert obj.content_type == "application/pdf" and obj.etag == f'"{obj.sha256}"'
    assert read_all(acme.tenant, "a/b.pdf") == data
    assert re.fullmatch(r"[0-9a-f]{16}", obj.version) and obj.blob == f"a/b.pdf~v{obj.version}"
    stored = storage_for(acme.tenant, Location.SHARED).head(obj.blob)
    assert stored.size == obj.ciphertext_size > len(data)
    assert data[:1000] not in b"".join(storage_for(acme.tenant, Location.SHARED).get(obj.blob))


def stored_names(tenant) -> list[str]:
    return [o.key for o in storage_for(tenant, Location.SHARED).list()]


def test_put_replaces_an_object_under_a_new_version_and_deletes_the_old(
    acme, django_capture_on_commit_callbacks
) -> None:
    first = object_put(tenant=acme.tenant, key="k", chunks=[b"one"])
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        second = object_put(tenant=acme.tenant, key="k", chunks=[b"two!"])
    assert len(callbacks) == 1
    assert StoredObject.objects.filter(tenant=acme.tenant).count() == 1
    assert second.version != first.version
    assert read_all(acme.tenant, "k") == b"two!"
    assert object_head(tenant=acme.tenant, key="k").size == 4
    assert stored_names(acme.tenant) == [second.blob]  # the replaced version went after commit


def test_a_write_that_dies_before_its_row_commits_leaves_the_old_version_readable(
    acme, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    """The storage holds the new version's bytes, the process dies (here: an error)
    before the row names them: readers still get the previous version, whole."""
    import objects.services

    before = object_put(tenant=acme.tenant, key="report", chunks=[b"version one"])

    def die(**kwargs):
        raise SystemExit("killed between the blob and the row")

    monkeypatch.setattr(objects.services.StoredObject.objects, "update_or_create", die)
    with pytest.raises(SystemExit):
        object_put(tenant=acme.tenant, key="report", chunks=[b"version two"])
    monkeypatch.undo()
    assert read_all(acme.tenant, "report") == b"version one"
    assert object_head(tenant=acme.tenant, key="report").version == before.version
    # The orphaned new version is a blob no row names; the next write cleans the old one.
    assert len(stored_names(acme.tenant)) == 2
    with django_capture_on_commit_callbacks(execute=True):
        after = object_put(tenant=acme.tenant, key="report", chunks=[b"version three"])
    assert read_all(acme.tenant, "report") == b"version three"
    assert before.blob not in stored_names(acme.tenant) and after.blob in stored_names(acme.tenant)


def test_a_replaced_version_put_back_does_not_decrypt(acme) -> None:
    """Versions are bound into the ciphertext: rolling an object back in storage fails."""
    old = object_put(tenant=acme.tenant, key="k", chunks=[b"old"])
    shared = storage_for(acme.tenant, Location.SHARED)
    kept = b"".join(shared.get(old.blob))
    new = object_put(tenant=acme.tenant, key="k", chunks=[b"new"])
    shared.put(new.blob, iter([kept]))
    with pytest.raises(ObjectUnauthentic):
        read_all(acme.tenant, "k")


def test_objects_written_before_versions_still_read_and_are_replaced(
    acme, django_capture_on_commit_callbacks
) -> None:
    from objects.services import objects_load

    objects_load(acme.tenant, [("legacy", b"from before")], versioned=False)
    assert stored_names(acme.tenant) == ["legacy"]  # the bare key, as before versions
    assert read_all(acme.tenant, "legacy") == b"from before"
    with django_capture_on_commit_callbacks(execute=True):
        new = object_put(tenant=acme.tenant, key="legacy", chunks=[b"now versioned"])
    assert read_all(acme.tenant, "legacy") == b"now versioned"
    assert stored_names(acme.tenant) == [new.blob]


def test_empty_object(acme) -> None:
    object_put(tenant=acme.tenant, key="empty", chunks=[])
    assert read_all(acme.tenant, "empty") == b""


def test_too_large_leaves_nothing_behind_and_keeps_the_old_version(acme, settings) -> None:
    settings.KEYWARD_OBJECT_MAX_BYTES = 10_000
    object_put(tenant=acme.tenant, key="big", chunks=[b"x" * 10_000])  # exactly the limit
    with pytest.raises(ObjectTooLarge):
        object_put(tenant=acme.tenant, key="big", chunks=chunks(b"y" * 10_001))
    with pytest.raises(ObjectTooLarge):
        object_put(tenant=acme.tenant, key="new", chunks=chunks(b"y" * 20_000))
    assert read_all(acme.tenant, "big") == b"x" * 10_000
    assert stored_names(acme.tenant) == [object_head(tenant=acme.tenant, key="big").blob]
    assert not StoredObject.objects.filter(key="new").exists()


def test_bad_keys_are_refused(acme) -> None:
    for key in ("", "/a", "a//b", "../x", "a\x00b"):
        with pytest.raises(InvalidKey):
            object_put(tenant=acme.tenant, key=key, chunks=[b"x"])


@pytest.mark.parametrize("state", [ServiceState.MIGRATING, ServiceState.ROTATION_PENDING])
def test_writes_are_refused_while_paused_reads_still_serve(acme, state) -> None:
    object_put(tenant=acme.tenant, key="before", chunks=[b"kept"])
    set_state(acme.tenant, state)
    with pytest.raises(ServicePaused):
        object_put(tenant=acme.tenant, key="during", chunks=[b"no"])
    with pytest.raises(ServicePaused):
        object_delete(tenant=acme.tenant, key="before")
    assert read_all(acme.tenant, "before") == b"kept"
    assert not StoredObject.objects.filter(key="during").exists()


def test_a_revoked_key_reads_and_writes_nothing(acme) -> None:
    object_put(tenant=acme.tenant, key="k", chunks=[b"secret"])
    set_state(acme.tenant, ServiceState.REVOKED)
    with pytest.raises(KeyRevoked):
        object_put(tenant=acme.tenant, key="k2", chunks=[b"x"])
    with pytest.raises(KeyRevoked):
        object_open(tenant=acme.tenant, key="k")


def test_another_tenants_object_is_not_found(acme, globex) -> None:
    object_put(tenant=acme.tenant, key="mine", chunks=[b"acme"])
    with pytest.raises(ObjectNotFound):
        object_open(tenant=globex.tenant, key="mine")
    with pytest.raises(ObjectNotFound):
        object_delete(tenant=globex.tenant, key="mine")
    assert read_all(acme.tenant, "mine") == b"acme"


def test_a_blob_moved_to_another_key_or_tenant_does_not_decrypt(acme, globex) -> None:
    a = object_put(tenant=acme.tenant, key="a", chunks=[b"A" * 100])
    b = object_put(tenant=acme.tenant, key="b", chunks=[b"B" * 100])
    shared = storage_for(acme.tenant, Location.SHARED)
    shared.put(b.blob, shared.get(a.blob))  # a's ciphertext under b's name
    with pytest.raises(ObjectUnauthentic):
        read_all(acme.tenant, "b")
    theirs = object_put(tenant=globex.tenant, key="a", chunks=[b"G" * 100])
    storage_for(globex.tenant, Location.SHARED).put(theirs.blob, shared.get(a.blob))
    with pytest.raises(ObjectMismatch):  # it names acme's DEK, not the one globex's row names
        read_all(globex.tenant, "a")


def test_delete_removes_bytes_and_row(acme) -> None:
    object_put(tenant=acme.tenant, key="gone", chunks=[b"x"])
    object_delete(tenant=acme.tenant, key="gone")
    assert list(storage_for(acme.tenant, Location.SHARED).list()) == []
    with pytest.raises(ObjectNotFound):
        object_head(tenant=acme.tenant, key="gone")
