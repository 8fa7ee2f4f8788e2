"""A real Celery worker moving 2,000 objects, killed with SIGKILL at random points.

Three kills each way in `make test`, ten in `make faults`; the seeds are
printed (tests/support/faults.py).

Each run of the worker is killed once the migration's progress (copied +
verified + deleted items) passed a random mark, the marks spread over the
copy, verify and delete phases; the task is then sent again to a fresh
worker, as the beat's resume job would. At every kill: no source copy is
gone before the switch. At the end: the target holds each manifest object
exactly once, every object decrypts to its manifest checksum, the rows point
to the target, and the source copies are gone.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from objects import locations
from objects.locations import storage_for
from objects.migration import AHEAD, MARK_ITEMS, migration_start
from objects.models import (
    Direction,
    ItemState,
    MigrationState,
    ObjectMigration,
    StoredObject,
    key_of_blob,
)
from objects.services import object_open, objects_load
from objects.tasks import run_migration
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.objects.conftest import SYSTEM, new_target_dek, random_blobs, set_state
from tests.support import invariants
from tests.support.faults import scale, seeded
from tests.support.worker import celery_worker

pytestmark = pytest.mark.faults

OBJECTS = 2000
KILLS = scale(3, 10)  # at least one in each of the copy, verify and delete phases


@pytest.fixture
def object_root(settings: Any, object_root: Path) -> Iterator[Path]:
    """In memory where the machine has it: the test is about crashes, not disk speed."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield object_root
        return
    root = Path(tempfile.mkdtemp(prefix="keyward-objects-", dir=shm))
    settings.KEYWARD_OBJECT_ROOT = root
    locations.forget()
    try:
        yield root
    finally:
        locations.forget()
        shutil.rmtree(root, ignore_errors=True)


def populate(tenant: Tenant, blobs: dict[str, bytes]) -> None:
    """The tenant's objects in the shared location (written directly: faster than the API)."""
    objects_load(tenant, blobs.items())


def progress(migration: ObjectMigration) -> int:
    migration.refresh_from_db()
    return migration.copied + migration.verified + migration.deleted


def check_sources_kept(tenant: Tenant, migration: ObjectMigration, blobs: dict[str, bytes]) -> None:
    """No source copy is deleted before every copy was verified and the rows switched."""
    migration.refresh_from_db()
    source = {key_of_blob(o.key) for o in storage_for(tenant, migration.source_location).list()}
    gone = set(blobs) - source
    if migration.state not in (MigrationState.DELETING, MigrationState.DONE):
        assert not gone, f"{len(gone)} source copies deleted in state {migration.state}"
        assert not migration.items.filter(state=ItemState.DELETED).exists()
        return
    assert not migration.items.exclude(state__in=[ItemState.VERIFIED, ItemState.DELETED]).exists()
    deleted = set(migration.items.filter(state=ItemState.DELETED).values_list("key", flat=True))
    # Those deleted since the last recorded batch, or handed to the threads
    # ahead of it, are gone but not yet marked.
    threads = settings.KEYWARD_OBJECT_MIGRATE_THREADS
    assert deleted <= gone and len(gone - deleted) <= MARK_ITEMS + (AHEAD + 1) * threads
    rows = StoredObject.objects.filter(tenant=tenant)
    assert set(rows.values_list("location", flat=True)) == {migration.target_location}


def crash_and_finish(
    tmp_path: Path, root: Path, tenant: Tenant, migration: ObjectMigration, blobs: dict[str, bytes],
    seed: int,
) -> list[str]:  # fmt: skip
    rng = random.Random(seed)
    # One mark well inside each phase (progress counts copied + verified +
    # deleted items), the others anywhere.
    total = len(blobs)
    marks = sorted(
        [
            rng.randrange(total // 20, 3 * total // 4),
            rng.randrange(total + total // 10, 2 * total - total // 4),
            rng.randrange(2 * total + total // 10, 3 * total - total // 4),
        ]
        + [rng.randrange(total // 20, 3 * total - total // 4) for _ in range(KILLS - 3)]
    )
    env = {"KEYWARD_OBJECT_ROOT": str(root), "KEYWARD_OBJECT_STORE": "filesystem"}
    states_at_kill: list[str] = []
    for n, mark in enumerate(marks):
        with celery_worker(tmp_path / f"{migration.direction}-{n}.log", env) as worker:
            run_migration.apply_async(args=(str(migration.pk),), queue=worker.queue)
            deadline = time.monotonic() + 60
            while progress(migration) < mark and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.random() * 0.02)  # land anywhere inside an item
            worker.kill()
        migration.refresh_from_db()
        assert migration.state != MigrationState.DONE, "killed too late: lower the marks"
        assert migration.state != MigrationState.FAILED, migration.error
        states_at_kill.append(str(migration.state))
        check_sources_kept(tenant, migration, blobs)
    log = tmp_path / f"{migration.direction}-final.log"
    with celery_worker(log, env) as worker:
        run_migration.apply_async(args=(str(migration.pk),), queue=worker.queue)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            migration.refresh_from_db()
            if migration.state in (MigrationState.DONE, MigrationState.FAILED):
                break
            time.sleep(0.1)
    assert migration.state == MigrationState.DONE, migration.error or log.read_text()[-3000:]
    return states_at_kill


def assert_phases(states: list[str]) -> None:
    """Kills landed while copying, while verifying (or just after) and while deleting."""
    assert len(states) >= KILLS
    assert {"copying", "deleting"} <= set(states), states
    assert {"verifying", "switching"} & set(states), states


def check_moved(tenant: Tenant, migration: ObjectMigration, blobs: dict[str, bytes]) -> None:
    migration.refresh_from_db()
    assert (migration.total, migration.copied, migration.verified, migration.deleted) == (
        (len(blobs),) * 4
    )
    target = [o.key for o in storage_for(tenant, migration.target_location).list()]
    assert len(target) == len(set(target)) == len(blobs)
    # Exactly the versions the rows name: each object once, under its own name.
    assert sorted(target) == sorted(o.blob for o in StoredObject.objects.filter(tenant=tenant))
    assert sorted(key_of_blob(name) for name in target) == sorted(blobs)
    assert list(storage_for(tenant, migration.source_location).list()) == []
    rows = StoredObject.objects.filter(tenant=tenant)
    assert set(rows.values_list("location", "dek_id")) == {
        (migration.target_location, migration.target_dek_id)
    }
    manifest = dict(migration.items.values_list("key", "sha256"))
    for key, data in blobs.items():
        _obj, stream = object_open(tenant=tenant, key=key)
        assert hashlib.sha256(b"".join(stream)).hexdigest() == manifest[key]
        assert manifest[key] == hashlib.sha256(data).hexdigest()


@pytest.mark.django_db(transaction=True)
def test_moves_survive_sigkill_both_ways(tmp_path: Path, object_root: Path) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    blobs = random_blobs(OBJECTS, 1024, 4096, seed=7)
    populate(tenant, blobs)

    target = new_target_dek(tenant)
    set_state(tenant, ServiceState.MIGRATING)
    there = migration_start(
        tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk
    )
    rng = seeded("object move kills")
    states = crash_and_finish(tmp_path, object_root, tenant, there, blobs, seed=rng.getrandbits(32))
    assert_phases(states)
    check_moved(tenant, there, blobs)

    set_state(tenant, ServiceState.BYOK_ACTIVE)
    back_dek = new_target_dek(tenant)
    set_state(tenant, ServiceState.MIGRATING_BACK)
    back = migration_start(tenant=tenant, direction=Direction.TO_SHARED, target_dek_id=back_dek.pk)
    states = crash_and_finish(tmp_path, object_root, tenant, back, blobs, seed=rng.getrandbits(32))
    assert_phases(states)
    check_moved(tenant, back, blobs)
    invariants.audit_chains_verify()
