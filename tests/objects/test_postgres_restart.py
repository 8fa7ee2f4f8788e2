"""PostgreSQL really restarted while a real worker moves objects or re-encrypts records.

The suite's PostgreSQL serves every other test at the same time, so this
module makes a cluster of its own (initdb in a temporary folder, durability
off, migrated once for the module: about 15 s) and points both this process
and the worker at it. A restart is `pg_ctl stop -m immediate` then start: the
server ends as in a crash, recovers at start, and every connection (the
worker's, its migration lock's, this process's) is cut. This is a genuine
restart rather than connections cut through a forwarder: what a restart does
to a job is also what it does to the locks held in the session and to the
transactions in flight, which a forwarder would only imitate.

After each restart the job is left alone: the worker must pick it up by
itself (the task retries on a lost database) and resume from its checkpoint.
Checked at every restart and at the end:
- the object move: no source copy is gone before the switch; at the end every
  object is once in the target, decrypting to its manifest checksum;
- the re-encryption: the records under the new DEK are exactly the job's
  `done` (progress and data commit together); every record up to the
  checkpoint is under it (the checkpoint never passes uncommitted work); the
  checkpoint never goes back; at the end every record decrypts to what it
  held and `done` equals the total (nothing counted twice).

Both jobs are in one module so that the private cluster is made once; the
object move is in objects/, the re-encryption in records/ (it calls the
objects' consumer too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import InterfaceError, OperationalError, connections, transaction

from keys.models import DataKey, DekState
from keys.runtime import reset_for_tests
from objects.locations import storage_for
from objects.migration import migration_start
from objects.models import Direction, MigrationState, ObjectMigration, key_of_blob
from objects.tasks import run_migration
from records.models import JobState, Record, ReencryptionJob, ReencryptionPart, SealedFields
from records.reencryption import reencryption_start
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from records.tasks import run_reencryption
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.objects.conftest import SYSTEM, new_target_dek, random_blobs, set_state
from tests.objects.test_migration_crash import check_moved, populate
from tests.support.faults import scale, seeded
from tests.support.restartable import PrivatePostgres, private_postgres
from tests.support.worker import celery_worker

pytestmark = pytest.mark.faults

T = TypeVar("T")

OBJECTS = scale(200, 2000)
MOVE_RESTARTS = scale(1, 6)
RECORDS = scale(1000, 20000)
REENCRYPT_RESTARTS = scale(1, 6)
RESTARTS: dict[str, int] = {}  # by kind, for the figures


@pytest.fixture(scope="module")
def private_cluster(django_db_setup: None, django_db_blocker: Any) -> Iterator[PrivatePostgres]:
    """The default database of this process, for this module: a cluster of its own."""
    with private_postgres() as server, django_db_blocker.unblock():
        server.createdb("keyward")
        conn = connections["default"]
        saved = dict(conn.settings_dict)
        conn.close()
        conn.settings_dict.update(
            HOST="127.0.0.1", PORT=str(server.port), NAME="keyward", USER="postgres", PASSWORD=""
        )
        try:
            call_command("migrate", verbosity=0)
            yield server
        finally:
            conn.close()
            conn.settings_dict.clear()
            conn.settings_dict.update(saved)
    print(f"PostgreSQL restarts survived: {RESTARTS}")


@pytest.fixture
def pg(private_cluster: PrivatePostgres, django_db_blocker: Any) -> Iterator[PrivatePostgres]:
    reset_for_tests()
    with django_db_blocker.unblock():
        yield private_cluster
        connections["default"].close()
    reset_for_tests()


def retrying(read: Callable[[], T], timeout: float = 30.0) -> T:
    """`read()`, again on a fresh connection while the server is coming back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (OperationalError, InterfaceError):
            connections["default"].close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def restart(pg: PrivatePostgres, kind: str, down_for: float) -> None:
    pg.restart(down_for=down_for)
    connections["default"].close()  # this process's connection was cut too
    RESTARTS[kind] = RESTARTS.get(kind, 0) + 1


# -- the object move -----------------------------------------------------------------


def move_progress(migration: ObjectMigration) -> tuple[int, str]:
    def read() -> tuple[int, str]:
        migration.refresh_from_db()
        return migration.copied + migration.verified + migration.deleted, str(migration.state)

    return retrying(read)


def sources_kept(tenant: Tenant, migration: ObjectMigration, blobs: dict[str, bytes]) -> None:
    """No source copy is gone before the switch, checked while the worker goes on.

    The listing is taken first and the state read after it: a copy already
    gone in the listing must belong to a migration past its switch by then.
    """
    source = {key_of_blob(o.key) for o in storage_for(tenant, migration.source_location).list()}
    migration.refresh_from_db()
    if set(blobs) - source:
        assert migration.state in (MigrationState.DELETING, MigrationState.DONE), migration.state


def test_an_object_move_survives_postgres_restarts(pg: PrivatePostgres, tmp_path: Path) -> None:
    rng = seeded("object move across PostgreSQL restarts")
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    blobs = random_blobs(OBJECTS, 1024, 4096, seed=rng.randrange(2**32))
    populate(tenant, blobs)
    target = new_target_dek(tenant)
    set_state(tenant, ServiceState.MIGRATING)
    migration = migration_start(
        tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk
    )
    total = 3 * len(blobs)  # copied + verified + deleted
    marks = sorted(rng.randrange(total // 20, total - total // 10) for _ in range(MOVE_RESTARTS))
    env = {
        "KEYWARD_OBJECT_ROOT": str(django_settings.KEYWARD_OBJECT_ROOT),
        "KEYWARD_OBJECT_STORE": "filesystem",
    }
    log = tmp_path / "worker.log"
    phases: list[str] = []
    with celery_worker(log, env) as worker:
        run_migration.apply_async(args=(str(migration.pk),), queue=worker.queue)
        for mark in marks:
            deadline = time.monotonic() + 120
            while (now := move_progress(migration))[0] < mark:
                assert now[1] not in (MigrationState.DONE, MigrationState.FAILED), now
                assert time.monotonic() < deadline, f"no progress past {now}: {log.read_text()}"
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)
            restart(pg, "object move", down_for=rng.random() * 2)
            phases.append(move_progress(migration)[1])
            retrying(lambda: sources_kept(tenant, migration, blobs))
        deadline = time.monotonic() + 300  # retries back off up to 10 s on a busy machine
        while move_progress(migration)[1] not in (MigrationState.DONE, MigrationState.FAILED):
            assert time.monotonic() < deadline, f"never resumed: {log.read_text()[-4000:]}"
            time.sleep(0.1)
    assert migration.state == MigrationState.DONE, migration.error
    check_moved(tenant, migration, blobs)
    print(f"object move: {len(marks)} PostgreSQL restarts, in phases {phases}")


# -- the re-encryption ---------------------------------------------------------------


def reencryption_invariants(
    tenant: Tenant, job: ReencryptionJob, target: DataKey
) -> tuple[int, ...]:
    """Checked at every restart; returns the checkpoints: the parts' in order, then the job's.

    Each part's checkpoint covers its own range: every record after the
    part's start and up to its checkpoint is under the new DEK. The job's own
    checkpoint is the final sweep's, over the whole range.
    """

    def read() -> tuple[int, tuple[int, ...], int, int]:
        # One snapshot: the job row, its parts and the sealed rows in the same transaction.
        with transaction.atomic():
            with connections["default"].cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            done, swept = ReencryptionJob.objects.values_list("done", "last_record_id").get(
                pk=job.pk
            )
            parts = list(
                ReencryptionPart.objects.filter(job=job)
                .order_by("number")
                .values_list("after_id", "last_record_id", "done")
            )
            sealed = SealedFields.objects.filter(record__tenant=tenant)
            moved = sealed.filter(dek=target).count()
            behind_sweep = sealed.exclude(dek=target).filter(record_id__lte=swept).count()
            behind_parts = sum(
                sealed.exclude(dek=target)
                .filter(record_id__gt=after, record_id__lte=checkpoint)
                .count()
                for after, checkpoint, _ in parts
            )
        parts_done = sum(part_done for *_, part_done in parts)
        assert parts_done <= done, f"the parts rewrote {parts_done}, the job counts {done}"
        checkpoints = (*(checkpoint for _, checkpoint, _ in parts), swept)
        return done, checkpoints, moved, behind_sweep + behind_parts

    done, checkpoints, moved, behind = retrying(read)
    assert moved == done, f"{moved} records under the new DEK, the job says {done}"
    assert behind == 0, f"{behind} records at or before a checkpoint not re-encrypted"
    return checkpoints


def decrypted(tenant: Tenant) -> dict[str, dict[str, str]]:
    records = Record.objects.filter(tenant=tenant).select_related("sealed")
    return {str(r.uid): record_fields(tenant, r) for r in records}


def test_a_reencryption_survives_postgres_restarts(
    pg: PrivatePostgres, tmp_path: Path, settings: Any
) -> None:
    rng = seeded("re-encryption across PostgreSQL restarts")
    tenant = tenant_create(name="Globex", slug="globex", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(RECORDS)))
    before = decrypted(tenant)
    new_target_dek(tenant)
    target = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)
    assert job.total == RECORDS
    marks = sorted(
        rng.randrange(RECORDS // 20, RECORDS - RECORDS // 5) for _ in range(REENCRYPT_RESTARTS)
    )
    # Parts of one batch allowed: the job is cut into its 8 parts however few
    # records the quick run has.
    env = {"KEYWARD_REENCRYPT_BATCH": "100", "KEYWARD_REENCRYPT_PART_BATCHES": "1"}
    log = tmp_path / "worker.log"
    checkpoints: list[tuple[int, ...]] = []
    with celery_worker(log, env) as worker:
        run_reencryption.apply_async(args=(str(job.pk),), queue=worker.queue)
        for mark in marks:
            deadline = time.monotonic() + 120
            while (done := retrying(lambda: ReencryptionJob.objects.get(pk=job.pk)).done) < mark:
                assert time.monotonic() < deadline, f"no progress past {done}: {log.read_text()}"
                time.sleep(0.002)
            restart(pg, "re-encryption", down_for=rng.random() * 2)
            checkpoint = reencryption_invariants(tenant, job, target)
            # No part's checkpoint goes back. (The parts exist once the job is
            # split; the sweep's checkpoint starts again at each of its passes.)
            then = checkpoints[-1][:-1] if checkpoints else ()
            if len(then) == len(checkpoint) - 1:
                now = checkpoint[:-1]
                assert all(a >= b for a, b in zip(now, then, strict=True)), checkpoints
            checkpoints.append(checkpoint)
        deadline = time.monotonic() + 300  # retries back off up to 10 s on a busy machine
        while (state := retrying(lambda: ReencryptionJob.objects.get(pk=job.pk)).state) not in (
            JobState.DONE,
            JobState.FAILED,
        ):
            assert time.monotonic() < deadline, f"never resumed: {log.read_text()[-4000:]}"
            reencryption_invariants(tenant, job, target)
            time.sleep(0.1)
    job.refresh_from_db()
    assert state == JobState.DONE, job.error
    assert job.done == RECORDS, job.done
    reencryption_invariants(tenant, job, target)
    assert set(
        SealedFields.objects.filter(record__tenant=tenant).values_list("dek", flat=True)
    ) == {target.pk}
    reset_for_tests()
    after = decrypted(tenant)
    assert after == before
    print(f"re-encryption: {len(marks)} PostgreSQL restarts, checkpoints {checkpoints}")
