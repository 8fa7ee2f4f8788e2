"""The sweep of stored versions that no row names (objects_sweep_orphans)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

import objects.services
from objects.locations import storage_for
from objects.migration import migration_run, migration_start
from objects.models import (
    Direction,
    Location,
    MigrationState,
    OrphanVersion,
    StoredObject,
    blob_name,
    split_blob,
)
from objects.services import object_open, object_put, objects_sweep_orphans
from objects.storage import StorageError
from objects.tasks import sweep_orphans
from tenants.models import ServiceState
from tests.objects.conftest import MIGRATING, new_target_dek, set_state

pytestmark = pytest.mark.django_db(transaction=True)


def stored(tenant: Any) -> set[str]:
    return {o.key for o in storage_for(tenant, Location.SHARED).list()}


def read(tenant: Any, key: str) -> bytes:
    _obj, stream = object_open(tenant=tenant, key=key)
    return b"".join(stream)


def died_write(tenant: Any, monkeypatch: pytest.MonkeyPatch, key: str) -> str:
    """A write killed after storing its version, before its row committed: the orphan's name."""
    before = stored(tenant)

    def die(**kwargs: Any) -> None:
        raise SystemExit("killed between the blob and the row")

    monkeypatch.setattr(objects.services.StoredObject.objects, "update_or_create", die)
    with pytest.raises(SystemExit):
        object_put(tenant=tenant, key=key, chunks=[b"never committed"])
    monkeypatch.undo()
    (orphan,) = stored(tenant) - before
    return orphan


def age_notes(seconds: float) -> None:
    OrphanVersion.objects.update(first_seen=timezone.now() - timedelta(seconds=seconds))


def test_an_orphan_is_noted_then_deleted_once_past_the_grace(acme: Any, monkeypatch: Any) -> None:
    tenant = acme.tenant
    kept = object_put(tenant=tenant, key="report", chunks=[b"version one"])
    orphan = died_write(tenant, monkeypatch, "report")
    assert stored(tenant) == {kept.blob, orphan}

    assert objects_sweep_orphans(tenant) == (1, 0)  # noted only
    assert objects_sweep_orphans(tenant) == (0, 0)  # still within the grace
    assert stored(tenant) == {kept.blob, orphan}
    age_notes(3601)
    assert objects_sweep_orphans(tenant) == (0, 1)
    assert stored(tenant) == {kept.blob}
    assert not OrphanVersion.objects.exists()
    assert read(tenant, "report") == b"version one"


def test_a_version_named_again_is_never_deleted_and_its_note_is_dropped(acme: Any) -> None:
    tenant = acme.tenant
    obj = object_put(tenant=tenant, key="k", chunks=[b"data"])
    # A note from an earlier sweep for what is now a named version (say, a
    # listing taken while a slow write committed its row).
    OrphanVersion.objects.create(
        tenant=tenant, location=Location.SHARED, name=obj.blob, first_seen=timezone.now()
    )
    age_notes(10 * 3600)
    assert objects_sweep_orphans(tenant) == (0, 0)
    assert stored(tenant) == {obj.blob} and not OrphanVersion.objects.exists()
    assert read(tenant, "k") == b"data"


def test_the_row_is_checked_again_under_the_key_lock_before_deleting(acme: Any) -> None:
    """The listing said unnamed; by the time of the delete a row names it: kept."""
    tenant = acme.tenant
    obj = object_put(tenant=tenant, key="k", chunks=[b"data"])
    shared = storage_for(tenant, Location.SHARED)
    assert objects.services._delete_orphan(tenant, str(tenant.pk), shared, "shared", obj.blob) == 0
    assert stored(tenant) == {obj.blob}


def test_nothing_is_swept_while_the_objects_move(acme: Any, monkeypatch: Any) -> None:
    tenant = acme.tenant
    object_put(tenant=tenant, key="k", chunks=[b"data"])
    orphan = died_write(tenant, monkeypatch, "k")
    assert objects_sweep_orphans(tenant) == (1, 0)
    age_notes(3601)
    set_state(tenant, MIGRATING)  # a move's target copies have no row yet
    assert objects_sweep_orphans(tenant) == (0, 0)
    assert orphan in stored(tenant)
    set_state(tenant, ServiceState.VENDOR_MANAGED)
    assert objects_sweep_orphans(tenant) == (0, 1)
    assert orphan not in stored(tenant)


def test_the_beat_task_sweeps_every_tenant(acme: Any, globex: Any, monkeypatch: Any) -> None:
    died_write(acme.tenant, monkeypatch, "a")
    died_write(globex.tenant, monkeypatch, "b")
    assert sweep_orphans() == 0
    assert OrphanVersion.objects.count() == 2
    age_notes(3601)
    assert sweep_orphans() == 2
    assert stored(acme.tenant) == set() and stored(globex.tenant) == set()
    assert not StoredObject.objects.exists()


def test_copies_a_finished_move_left_in_the_old_location_are_swept(acme: Any) -> None:
    """A move whose last deletes were lost: the shared copies no row names go."""
    tenant = acme.tenant
    objects_ = {f"k{n}": bytes([n]) * 300 for n in range(5)}
    for key, data in objects_.items():
        object_put(tenant=tenant, key=key, chunks=[data])
    shared = storage_for(tenant, Location.SHARED)
    kept = {name: b"".join(shared.get(name)) for name in stored(tenant)}
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    move = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk)
    assert migration_run(str(move.pk)) == MigrationState.DONE
    set_state(tenant, ServiceState.BYOK_ACTIVE)
    for name, data in list(kept.items())[:3]:  # as if those deletes never happened
        shared.put(name, iter([data]))
    dedicated = {o.key for o in storage_for(tenant, Location.DEDICATED).list()}

    assert objects_sweep_orphans(tenant) == (3, 0)
    age_notes(3601)
    assert objects_sweep_orphans(tenant) == (0, 3)
    assert stored(tenant) == set()
    assert {o.key for o in storage_for(tenant, Location.DEDICATED).list()} == dedicated
    for key, data in objects_.items():
        assert read(tenant, key) == data


def test_an_unreachable_location_does_not_stop_the_sweep_of_the_other(
    acme: Any, monkeypatch: Any
) -> None:
    tenant = acme.tenant
    object_put(tenant=tenant, key="k", chunks=[b"data"])
    orphan = died_write(tenant, monkeypatch, "k")
    target = new_target_dek(tenant)  # a finished move: the dedicated location is swept too
    set_state(tenant, MIGRATING)
    move = migration_start(tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk)
    assert migration_run(str(move.pk)) == MigrationState.DONE
    set_state(tenant, ServiceState.BYOK_ACTIVE)
    dedicated = storage_for(tenant, Location.DEDICATED)

    tried: list[str] = []

    def unreachable(prefix: str = "") -> Any:
        tried.append(prefix)
        raise StorageError("the bucket did not answer")

    # A store outage is not something the local store can be made to show.
    monkeypatch.setattr(dedicated, "list", unreachable)
    assert orphan in stored(tenant)  # the move deleted the named copy only
    assert objects_sweep_orphans(tenant) == (1, 0)
    age_notes(3601)
    assert objects_sweep_orphans(tenant) == (0, 1)
    assert orphan not in stored(tenant) and len(tried) == 2


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("report~v0123456789abcdef", ("report", "0123456789abcdef")),
        ("a/b~v~v0123456789abcdef", ("a/b~v", "0123456789abcdef")),
        ("report", ("report", "")),  # written before versions
        ("report~vABCDEF0123456789", ("report~vABCDEF0123456789", "")),  # not a version
        ("report~v0123", ("report~v0123", "")),
    ],
)
def test_a_storage_name_splits_into_key_and_version(name: str, parts: tuple[str, str]) -> None:
    assert split_blob(name) == parts
    assert blob_name(*parts) == name
