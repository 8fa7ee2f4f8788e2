"""Moving a tenant's objects between the shared and its dedicated location.

When BYOK is enabled the objects go to the dedicated location, re-encrypted
under a DEK wrapped by the customer's key; when it is removed they come back.
The BYOK flows put the tenant in `migrating` / `migrating_back` (writes are
refused, reads keep serving each object from where its row says), call
`migration_start`; the engine tells keys when a move ends (`data_move_finished`).

Guarantees: every object of the manifest ends up exactly once in the target
location (a storage key is one object; puts are atomic overwrites), with its
plaintext checksum verified against the manifest, before any source copy is
deleted; a failed verification deletes nothing and changes no row.

The plaintext is hashed once, while it is copied, and the copy is verified
by reading it back without hashing it again. Why that still proves the
checksum of what is stored (see migration_run for the steps):

1. The copy streams each object's plaintext through SHA-256 into the
   encryption, and compares the digest and size with the manifest when the
   plaintext ends, before the final segment is produced. A mismatch raises
   inside the put, which then leaves nothing behind; and a stream without its
   final segment would not authenticate anyway. So every ciphertext this
   engine lands in the target encrypts a plaintext that matched the manifest.
2. Each encryption draws a fresh random 32-byte salt for the object's header,
   and the item records that salt once the put returned. The salt names that
   one write: no other write draws it (2^-256), and only a holder of the DEK
   can make segments that authenticate under the subkey derived from it.
3. Verification reads the copy back from the target, requires its header to
   name the target DEK and the recorded salt, and authenticates every segment
   (AES-GCM, with the header, the tenant and key binding, the index and the
   final flag in the associated data). Authentic segments under that subkey
   are exactly the ones written in 2, in order, none missing: so the stored
   plaintext is the one hashed in 1, and its checksum is the manifest's.
4. A copy with another salt (a stale or foreign write: an earlier run killed
   between its put and its record, or anything else that wrote the key
   since) proves nothing about its plaintext: it is not accepted but copied
   again, and verified again. Items copied before salts were recorded are
   verified the old way, by hashing the plaintext read back.

Only one run of a migration works at a time (_Exclusive): a second one sent
while the first still runs returns at once, saying it runs elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Case, CharField, F, Value, When
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from crypto.envelope import KeyRevoked
from crypto.segments import (
    ObjectFormatError,
    ObjectUnauthentic,
    authenticate_stream,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
    peek_header,
)
from keys.models import DataKey, DekState
from keys.notify import notify_key_admins
from keys.providers.base import KeyAccessDenied, KeyMaterialInvalid
from keys.services.lifecycle import data_move_finished
from objects.keyring import dek_material
from objects.locations import ensured, storage_for
from objects.models import (
    OPEN_MIGRATION_STATES,
    Direction,
    ItemState,
    Location,
    MigrationItem,
    MigrationState,
    ObjectMigration,
    StoredObject,
    blob_name,
    key_of_blob,
)
from objects.services import OBJECT_READS, object_binding
from objects.storage import ObjectMissing, Storage, StorageDenied
from tenants.models import MIGRATING_STATES, ServiceState, Tenant

logger = logging.getLogger(__name__)

PAGE = 500  # items loaded per query
# Item steps are recorded in batches of this many items, bytes or seconds,
# whichever comes first: a killed run redoes at most one batch.
MARK_ITEMS = 50
MARK_BYTES = 64 * 1024 * 1024
MARK_SECONDS = 0.5
_COUNTERS: dict[str, str] = {
    ItemState.COPIED: "copied",
    ItemState.VERIFIED: "verified",
    ItemState.DELETED: "deleted",
}
STATE_CHECK_SECONDS = 1.0
_SHOWN = 5  # keys named in an error
# Items handed to the threads ahead of the one being recorded, per thread: the
# threads never wait for the recording, and a killed run has at most this many
# per thread done but unrecorded beyond the unwritten batch.
AHEAD = 2
# A verification that sent items back to copying runs the copy again at once,
# up to this many times; further rounds wait for the next resume.
PASSES = 3
RUNNING_ELSEWHERE = "running elsewhere"
# The run's lock went with its connection (a database restart, a network cut):
# it stopped, changing nothing, and nothing else holds the lock now, so the
# task sends the run again (objects/tasks.py) rather than leaving the move
# to the beat's resume job minutes later.
LOCK_LOST = "lock lost"
_LOCK_NAMESPACE = 0x4B574F4D  # "KWOM": object migrations, in pg_advisory_lock(int, int)


RUN_MIGRATION = "objects.run_migration"


class MigrationRefused(Exception):
    """The migration cannot start now; the message says why."""


class VerificationFailed(Exception):
    """The target does not hold exactly the manifest's objects, or one does not check."""


class _Stop(Exception):
    """The tenant left the migrating state, or its key or storage refuses: stop for now."""


class _LostLock(Exception):
    """This run no longer holds the migration's lock: leave the migration as it is."""


class _Mismatch(Exception):
    """The plaintext streamed from the source does not match the manifest."""


class _Exclusive:
    """At most one run of a migration at a time, in any process on any machine.

    PostgreSQL: a session advisory lock taken with pg_try_advisory_lock on a
    connection of its own, held for the whole run. It needs no expiry or
    renewal: the server drops it the moment that connection ends, so a worker
    killed with SIGKILL frees it at once and the very next send resumes the
    move, while a slow but live run (a large object on a slow store) keeps it
    however long it takes. A lease in a column would have to pick a duration:
    too short and a live run loses it and races its successor, too long and
    every crash delays the resume by that much. The run checks the connection
    as it goes and stops, changing nothing, if it was lost (the lock with it).
    It needs a session that outlives transactions: no PgBouncer in
    transaction mode in front of the workers.

    SQLite (embedded mode, one machine by construction): an exclusive flock
    on a file per migration under DATA_DIR/locks, which the kernel releases
    when the process dies, just as PostgreSQL does.
    """

    def __init__(self, migration_id: uuid.UUID) -> None:
        self.migration_id = migration_id
        self._connection: BaseDatabaseWrapper | None = None
        self._fd: int | None = None

    def acquire(self) -> bool:
        if connections[DEFAULT_DB_ALIAS].vendor == "postgresql":
            return self._acquire_advisory()
        return self._acquire_flock()

    def _acquire_advisory(self) -> bool:
        objid = int.from_bytes(self.migration_id.bytes[:4], "big", signed=True)
        connection = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, objid])
                row = cursor.fetchone()
        except BaseException:
            connection.close()
            raise
        if not row or not row[0]:
            connection.close()
            return False
        self._connection = connection
        return True

    def _acquire_flock(self) -> bool:
        folder = Path(settings.DATA_DIR) / "locks"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(
            folder / f"object-migration-{self.migration_id}.lock", os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def check(self) -> None:
        """Raise _LostLock when the lock's connection is gone (the lock went with it)."""
        if self._connection is None:
            return
        try:
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError:
            raise _LostLock("the connection holding the migration's lock was lost") from None

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DatabaseError):
                self._connection.close()  # ends the session and its advisory lock
            self._connection = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _locations(direction: str) -> tuple[str, str]:
    if direction == Direction.TO_DEDICATED:
        return Location.SHARED, Location.DEDICATED
    if direction == Direction.TO_SHARED:
        return Location.DEDICATED, Location.SHARED
    raise ValueError(f"unknown direction {direction!r}")


@transaction.atomic
def migration_start(
    *, tenant: Tenant, direction: str, target_dek_id: int, actor: Actor | None = None
) -> ObjectMigration:
    """Take the manifest of the tenant's objects to move, and return the migration.

    The tenant must already be `migrating` / `migrating_back` (its row is locked
    here, so writes in flight finish first and none can land after the
    manifest). Objects already in the target location stay where they are.
    Idempotent: an open migration in the same direction is returned as is.
    The caller enqueues `objects.run_migration` after commit (`enqueue_run`).
    """
    source, target = _locations(direction)
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.state not in MIGRATING_STATES:
        raise MigrationRefused(
            f"Objects move only while the tenant is migrating; it is {locked.get_state_display()}."
        )
    existing = ObjectMigration.objects.filter(
        tenant=locked, state__in=OPEN_MIGRATION_STATES
    ).first()
    if existing is not None:
        if existing.direction != direction:
            raise MigrationRefused("Another move of this tenant's objects is under way.")
        return existing
    dek = DataKey.objects.filter(
        pk=target_dek_id, tenant=locked, state__in=[DekState.ACTIVE, DekState.RETIRING]
    ).first()
    if dek is None:
        raise MigrationRefused(f"Data key {target_dek_id} is not a live data key of this tenant.")
    migration = ObjectMigration.objects.create(
        tenant=locked,
        direction=direction,
        state=MigrationState.MANIFEST,
        source_location=source,
        target_location=target,
        target_dek=dek,
    )
    rows = (
        StoredObject.objects.filter(tenant=locked, location=source)
        .order_by("key")
        .values_list("pk", "key", "version", "sha256", "size")
    )
    total = size = 0
    batch: list[MigrationItem] = []
    for pk, key, version, sha256, object_size in rows.iterator(chunk_size=2000):
        batch.append(
            MigrationItem(
                migration=migration,
                object_id=pk,
                key=key,
                version=version,
                sha256=sha256,
                size=object_size,
                source_location=source,
            )
        )
        total += 1
        size += object_size
        if len(batch) >= 2000:
            MigrationItem.objects.bulk_create(batch)
            batch = []
    MigrationItem.objects.bulk_create(batch)
    migration.total = total
    migration.bytes_total = size
    migration.state = MigrationState.COPYING
    migration.save(update_fields=["total", "bytes_total", "state"])
    record(
        tenant=locked,
        actor=actor or Actor.system("object migration"),
        action="objects.migration_start",
        target=direction,
        details={
            "migration": str(migration.pk),
            "objects": total,
            "bytes": size,
            "from": source,
            "to": target,
            "target_dek": dek.version,
        },
    )
    return migration


def enqueue_run(migration: ObjectMigration) -> None:
    """Run the migration in a worker once the surrounding transaction commits.

    Enqueued by name: the task module imports this one, not the reverse.
    """
    migration_id = str(migration.pk)
    transaction.on_commit(lambda: current_app.send_task(RUN_MIGRATION, args=[migration_id]))


def migration_run(migration_id: str) -> str:
    """Run (or resume) a migration as far as it can go; return its state. Idempotent.

    1. copying: each pending item is read from the source, decrypted under its
       DEK (authenticated against its key and tenant), checked against the
       manifest's SHA-256, re-encrypted under the target DEK and put in the
       target location under the same key (an atomic overwrite: a run killed
       after the put redoes that object, never duplicates it), then marked
       copied.
    2. verifying: the target location's listing must hold exactly the
       manifest's keys (and the objects already there before), each of the
       right size; each copy is read back, must name the target DEK and the
       salt recorded when it was copied, and every segment must authenticate
       (which proves the manifest's SHA-256: see the module's docstring);
       then it is marked verified. A copy with another salt goes back to
       copying and is copied and verified again.
    3. switching: one transaction points every manifest object's row to the
       target location and DEK.
    4. deleting: only now the source copies are deleted (idempotent, marked
       per item); then done, and keys are told (`data_move_finished`).
    Any check that fails in 1 or 2 ends the migration in `failed`: source
    copies and rows untouched, audited, key administrators alerted. Before
    the switch the run stops (`stopped`, resumable) when the tenant leaves
    the migrating state or its key or storage refuses.
    """
    migration = ObjectMigration.objects.select_related("tenant", "target_dek").get(pk=migration_id)
    if migration.state in (MigrationState.DONE, MigrationState.FAILED):
        return str(migration.state)
    lock = _Exclusive(migration.pk)
    if not lock.acquire():
        logger.info("object migration %s is running elsewhere", migration.pk)
        return RUNNING_ELSEWHERE
    try:
        # Read again under the lock: the run that held it may have moved it on.
        migration.refresh_from_db()
        if migration.state in (MigrationState.DONE, MigrationState.FAILED):
            return str(migration.state)
        return _run(_Run(migration, lock))
    finally:
        lock.release()


def _run(run: _Run) -> str:
    try:
        if run.state in (MigrationState.STOPPED, MigrationState.MANIFEST):
            run.resume()
        for _ in range(PASSES):
            if run.state == MigrationState.COPYING:
                run.copy()
                run.advance(MigrationState.COPYING, MigrationState.VERIFYING)
            if run.state == MigrationState.VERIFYING:
                run.verify()  # back to copying when a copy must be made again
                run.advance(MigrationState.VERIFYING, MigrationState.SWITCHING)
            if run.state != MigrationState.COPYING:
                break
        if run.state == MigrationState.SWITCHING:
            run.switch()
        if run.state == MigrationState.DELETING:
            run.delete_sources()
    except VerificationFailed as exc:
        return run.fail(str(exc))
    except _Stop as exc:
        return run.stop(str(exc))
    except _LostLock as exc:
        logger.warning("object migration %s: %s; stopped, to be sent again", run.m.pk, exc)
        return LOCK_LOST
    return str(run.state)


# id, key, version, sha256, size, source location, target salt
Item = tuple[int, str, str, str, int, str, str]
Step = tuple[str, str]  # an item's next state and its target salt


def _items(migration_id: Any, state: str) -> Iterator[list[Item]]:
    """Pages of the items in `state`, by id."""
    after = 0
    while True:
        page = list(
            MigrationItem.objects.filter(migration_id=migration_id, state=state, id__gt=after)
            .order_by("id")
            .values_list(
                "id", "key", "version", "sha256", "size", "source_location", "target_salt"
            )[:PAGE]
        )
        if not page:
            return
        yield page
        after = page[-1][0]


class _Run:
    def __init__(self, migration: ObjectMigration, lock: _Exclusive) -> None:
        self.m = migration
        self.lock = lock
        self.tenant = migration.tenant
        self.tenant_id = str(migration.tenant_id)
        self.state = str(migration.state)
        self._checked = 0.0
        self._storages: dict[str, Storage] = {}
        self._batch: list[tuple[int, str, str, str]] = []
        self._batch_bytes = 0
        self._flushed = time.monotonic()

    # -- state -------------------------------------------------------------
    def storage(self, location: str) -> Storage:
        found = self._storages.get(location)
        if found is None:
            if location == self.m.target_location:
                found = ensured(self.tenant, location)
            else:
                found = storage_for(self.tenant, location)
            self._storages[location] = found
        return found

    def check_tenant(self, *, force: bool = False, tenant: bool = True) -> None:
        """Every STATE_CHECK_SECONDS: still holding the lock, and (with `tenant`)
        the tenant still migrating."""
        now = time.monotonic()
        if not force and now - self._checked < STATE_CHECK_SECONDS:
            return
        self.lock.check()
        if tenant:
            state = Tenant.objects.values_list("state", flat=True).get(pk=self.tenant.pk)
            if state not in MIGRATING_STATES:
                raise _Stop(f"the tenant is {ServiceState(state).label}, no longer migrating")
        self._checked = now

    def advance(self, from_state: str, to_state: str) -> None:
        ObjectMigration.objects.filter(pk=self.m.pk, state=from_state).update(
            state=to_state, checkpoint=0, updated=timezone.now()
        )
        self.state = str(ObjectMigration.objects.values_list("state", flat=True).get(pk=self.m.pk))

    def resume(self) -> None:
        self.check_tenant(force=True)
        # The items say how far it went; copy and verify skip what is done.
        self.advance(str(self.m.state), MigrationState.COPYING)

    def material(self, dek_id: int) -> bytes:
        try:
            return dek_material(self.tenant_id, dek_id)
        except (KeyRevoked, KeyAccessDenied, KeyMaterialInvalid) as exc:
            raise _Stop(f"the data key cannot be used: {exc}") from None

    def _ring(self, dek_ids: set[int]) -> Callable[[int], bytes]:
        """DEK bytes by id, loaded here so that worker threads never touch the database."""
        ring = {dek_id: self.material(dek_id) for dek_id in dek_ids}

        def key_for(dek_id: int) -> bytes:
            found = ring.get(dek_id)
            if found is None:
                raise ObjectUnauthentic("the object names another data key than its row")
            return found

        return key_for

    def _parallel(self, state: str, step: Callable[[Item], Step], *, tenant: bool = True) -> None:
        """Run `step` on every item in `state` on threads and record each outcome in
        this thread, in order. Hashing, I/O and AES-GCM on a whole segment release the
        GIL and run side by side (the pinned pyca/cryptography, constraints.txt: two
        threads seal 64 KiB segments 1.9 times as fast as one); the Python between
        those calls takes turns.

        The threads are kept fed: AHEAD items per thread are handed out beyond
        the one being recorded, so none waits for the database.
        """
        threads = max(1, int(settings.KEYWARD_OBJECT_MIGRATE_THREADS))
        pool = ThreadPoolExecutor(threads, thread_name_prefix="object-move")
        running: deque[tuple[Item, Future[Step]]] = deque()

        def record_oldest() -> None:
            item, future = running.popleft()
            to_state, salt = future.result()
            self._mark(item[0], item[4], state, to_state, salt)

        try:
            for page in _items(self.m.pk, state):
                for item in page:
                    self.check_tenant(tenant=tenant)
                    running.append((item, pool.submit(step, item)))
                    if len(running) > AHEAD * threads:
                        record_oldest()
            while running:
                record_oldest()
        finally:
            # On an error, what was not started never starts; what runs finishes.
            pool.shutdown(wait=True, cancel_futures=True)
        self.flush()

    # -- 1. copy -------------------------------------------------------------
    def copy(self) -> None:
        target = self.storage(self.m.target_location)
        source = self.storage(self.m.source_location)
        target_dek_id = int(self.m.target_dek_id)
        target_key = self.material(target_dek_id)
        source_deks = set(
            StoredObject.objects.filter(
                migration_items__migration=self.m, migration_items__state=ItemState.PENDING
            )
            .values_list("dek_id", flat=True)
            .distinct()
        )
        key_for = self._ring(source_deks)

        def copy_one(item: Item) -> Step:
            _item_id, key, version, sha256, size, _source_location, _salt = item
            binding = object_binding(self.tenant_id, key, version)
            name = blob_name(key, version)
            try:
                plain = decrypt_stream(
                    source.get(name, sizes=OBJECT_READS), key_for=key_for, binding=binding
                )
                pieces = encrypt_stream(
                    _checked(plain, sha256, size), dek=target_key, dek_id=target_dek_id,
                    binding=binding,
                )  # fmt: skip
                # The header comes first, before any plaintext is read.
                header, pieces = peek_header(pieces)
                target.put(name, pieces)
            except ObjectMissing:
                raise VerificationFailed(
                    f"the source copy of {key!r} is missing; nothing was deleted"
                ) from None
            except (ObjectUnauthentic, ObjectFormatError):
                raise VerificationFailed(
                    f"the source copy of {key!r} does not authenticate; nothing was deleted"
                ) from None
            except _Mismatch:
                raise VerificationFailed(
                    f"the source copy of {key!r} does not match the manifest's checksum; "
                    "nothing was deleted"
                ) from None
            except StorageDenied as exc:
                raise _Stop(f"the storage refused: {exc}") from None
            return ItemState.COPIED, header.salt.hex()

        self._parallel(ItemState.PENDING, copy_one)

    def _mark(self, item_id: int, size: int, from_state: str, to_state: str, salt: str) -> None:
        """Record an item's step; written in batches (MARK_ITEMS, MARK_BYTES, MARK_SECONDS).

        A run killed before a batch is written redoes those items' steps, which
        are idempotent (an overwrite with the same plaintext, a read, a delete).
        """
        batch = self._batch
        if batch and batch[0][1:3] != (from_state, to_state):
            self.flush()
        batch.append((item_id, from_state, to_state, salt))
        self._batch_bytes += size
        if (
            len(batch) >= MARK_ITEMS
            or self._batch_bytes >= MARK_BYTES
            or time.monotonic() - self._flushed >= MARK_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._flushed = time.monotonic()
        if not batch:
            return
        _, from_state, to_state, _ = batch[0]
        salts = {item_id: salt for item_id, _, _, salt in batch}
        with transaction.atomic():
            # Only the items still in `from_state` count (a batch is recorded once).
            moved = list(
                MigrationItem.objects.select_for_update()
                .filter(pk__in=list(salts), state=from_state)
                .values_list("pk", "size")
            )
            if not moved:
                return
            changes: dict[str, Any] = {"state": to_state}
            if to_state == ItemState.COPIED:
                changes["target_salt"] = Case(
                    *(When(pk=pk, then=Value(salts[pk])) for pk, _ in moved),
                    output_field=CharField(),
                )
            elif to_state == ItemState.PENDING:
                changes["target_salt"] = ""
            MigrationItem.objects.filter(pk__in=[pk for pk, _ in moved]).update(**changes)
            count, size = len(moved), sum(size for _, size in moved)
            counts: dict[str, Any]
            if to_state == ItemState.PENDING:  # to be copied again
                counts = {"copied": F("copied") - count, "bytes_copied": F("bytes_copied") - size}
            else:
                counter = _COUNTERS[to_state]
                counts = {counter: F(counter) + count}
                if to_state == ItemState.COPIED:
                    counts["bytes_copied"] = F("bytes_copied") + size
            ObjectMigration.objects.filter(pk=self.m.pk).update(
                checkpoint=max(pk for pk, _ in moved), updated=timezone.now(), **counts
            )

    # -- 2. verify -----------------------------------------------------------
    def verify(self) -> None:
        self.check_tenant(force=True)
        target = self.storage(self.m.target_location)
        listed = {o.key: o.size for o in target.list("")}
        expected: dict[str, int] = {}
        for manifest_page in _manifest_pages(self.m.pk):
            for key, size in manifest_page:
                expected[key] = ciphertext_size(size)
        already = StoredObject.objects.filter(
            tenant=self.tenant, location=self.m.target_location
        ).exclude(migration_items__migration=self.m)
        for key, version, stored_size in already.values_list(
            "key", "version", "ciphertext_size"
        ).iterator():
            expected[blob_name(key, version)] = stored_size
        # Blobs no row names are left by writes that failed before their row was
        # committed (never acknowledged to anyone): not the tenant's data, so they
        # neither count nor stop the move. Writes are refused while it runs, so
        # none can be in flight now.
        # (A replaced version whose delete did not happen is one of them.)
        unexpected = set(listed) - set(expected)
        known = {
            blob_name(key, version)
            for key, version in StoredObject.objects.filter(
                tenant=self.tenant, key__in={key_of_blob(name) for name in unexpected}
            ).values_list("key", "version")
        } & unexpected
        orphans = unexpected - known
        if orphans:
            logger.warning(
                "object move %s: %d blobs without a row in the target are ignored%s",
                self.m.pk,
                len(orphans),
                _named(sorted(orphans)),
            )
            listed = {k: v for k, v in listed.items() if k not in orphans}
        missing = sorted(set(expected) - set(listed))
        extra = sorted(set(listed) - set(expected))
        if missing or extra or len(listed) != len(expected):
            raise VerificationFailed(
                f"the target location holds {len(listed)} objects where {len(expected)} were "
                f"expected ({len(missing)} missing{_named(missing)}, {len(extra)} not in the "
                f"manifest{_named(extra)}); nothing was deleted"
            )
        wrong = sorted(k for k, size in expected.items() if listed[k] != size)
        if wrong:
            raise VerificationFailed(
                f"{len(wrong)} objects in the target have the wrong size{_named(wrong)}; "
                "nothing was deleted"
            )
        target_dek_id = int(self.m.target_dek_id)
        key_for = self._ring({target_dek_id})

        def verify_one(item: Item) -> Step:
            _item_id, key, version, sha256, size, _source, salt = item
            binding = object_binding(self.tenant_id, key, version)
            try:
                header, pieces = peek_header(
                    target.get(blob_name(key, version), sizes=OBJECT_READS)
                )
                if not salt:
                    # Copied before salts were recorded: hash the plaintext again.
                    plain = decrypt_stream(pieces, key_for=key_for, binding=binding)
                    for _ in _checked(plain, sha256, size):
                        pass
                elif header.dek_id != target_dek_id or header.salt.hex() != salt:
                    logger.warning(
                        "object migration %s: the copy of %r is not the one it wrote; copying "
                        "it again", self.m.pk, key,
                    )  # fmt: skip
                    return ItemState.PENDING, ""
                elif authenticate_stream(pieces, key_for=key_for, binding=binding) != size:
                    raise _Mismatch  # unreachable once the listed size matched; kept as a check
            except ObjectMissing:
                raise VerificationFailed(
                    f"the copy of {key!r} vanished from the target; nothing was deleted"
                ) from None
            except (ObjectUnauthentic, ObjectFormatError):
                raise VerificationFailed(
                    f"the copy of {key!r} does not authenticate; nothing was deleted"
                ) from None
            except _Mismatch:
                raise VerificationFailed(
                    f"the copy of {key!r} does not match the manifest's checksum; "
                    "nothing was deleted"
                ) from None
            except StorageDenied as exc:
                raise _Stop(f"the storage refused: {exc}") from None
            return ItemState.VERIFIED, salt

        self._parallel(ItemState.COPIED, verify_one)
        left = MigrationItem.objects.filter(migration=self.m).exclude(state=ItemState.VERIFIED)
        if left.exists():
            # Copies to make again (or, from before runs were exclusive, items a
            # concurrent run had not copied yet): back to copying.
            self.advance(MigrationState.VERIFYING, MigrationState.COPYING)

    # -- 3. switch -------------------------------------------------------------
    def switch(self) -> None:
        with transaction.atomic():
            locked = ObjectMigration.objects.select_for_update().get(pk=self.m.pk)
            if locked.state != MigrationState.SWITCHING:
                self.state = str(locked.state)
                return
            if (
                MigrationItem.objects.filter(migration=locked)
                .exclude(state=ItemState.VERIFIED)
                .exists()
            ):
                raise VerificationFailed("items were not all verified; nothing was switched")
            switched = StoredObject.objects.filter(
                tenant_id=locked.tenant_id,
                pk__in=MigrationItem.objects.filter(migration=locked).values("object_id"),
            ).update(
                location=locked.target_location,
                dek_id=locked.target_dek_id,
                updated=timezone.now(),
            )
            locked.state = MigrationState.DELETING
            locked.checkpoint = 0
            locked.save(update_fields=["state", "checkpoint", "updated"])
            logger.info(
                "objects of %s switched to %s: %d", self.tenant_id, locked.target_location, switched
            )
        self.state = MigrationState.DELETING

    # -- 4. delete -------------------------------------------------------------
    def delete_sources(self) -> None:
        # Storages made here: the threads only use them.
        storages = {
            location: self.storage(location)
            for location in MigrationItem.objects.filter(migration=self.m, state=ItemState.VERIFIED)
            .order_by()
            .values_list("source_location", flat=True)
            .distinct()
        }

        def delete_one(item: Item) -> Step:
            _item_id, key, version, _sha, _size, source_location, salt = item
            storages[source_location].delete(blob_name(key, version))
            return ItemState.DELETED, salt

        # After the switch the tenant's state does not matter: finish deleting.
        self._parallel(ItemState.VERIFIED, delete_one, tenant=False)
        with transaction.atomic():
            locked = ObjectMigration.objects.select_for_update().get(pk=self.m.pk)
            if locked.state != MigrationState.DELETING:
                self.state = str(locked.state)
                return
            locked.state = MigrationState.DONE
            locked.finished = timezone.now()
            locked.save(update_fields=["state", "finished", "updated"])
            record(
                tenant=self.tenant,
                actor=Actor.system("object migration"),
                action="objects.migration_done",
                target=locked.direction,
                details={
                    "migration": str(locked.pk),
                    "objects": locked.total,
                    "bytes": locked.bytes_total,
                    "to": locked.target_location,
                },
            )
            _send_finished(locked)
        self.state = MigrationState.DONE

    # -- endings ---------------------------------------------------------------
    def fail(self, reason: str) -> str:
        with transaction.atomic():
            locked = ObjectMigration.objects.select_for_update().get(pk=self.m.pk)
            if locked.state in (
                MigrationState.DONE,
                MigrationState.FAILED,
                MigrationState.DELETING,
            ):
                return str(locked.state)
            locked.state = MigrationState.FAILED
            locked.error = reason
            locked.finished = timezone.now()
            locked.save(update_fields=["state", "error", "finished", "updated"])
            record(
                tenant=self.tenant,
                actor=Actor.system("object migration"),
                action="objects.migration_failed",
                outcome=Outcome.FAILURE,
                target=locked.direction,
                reason=reason,
                details={"migration": str(locked.pk), "copied": locked.copied},
            )
            notify_key_admins(
                self.tenant,
                "moving your objects stopped",
                "Keyward stopped moving this tenant's objects because a check failed:\n\n"
                f"{reason}\n\nEvery object is still in its original location and readable; "
                "nothing was deleted. Contact support to resume the move.",
            )
            _send_finished(locked)
        logger.error("object migration %s failed: %s", locked.pk, reason)
        return MigrationState.FAILED

    def stop(self, reason: str) -> str:
        with transaction.atomic():
            locked = ObjectMigration.objects.select_for_update().get(pk=self.m.pk)
            if locked.state not in (
                MigrationState.COPYING,
                MigrationState.VERIFYING,
                MigrationState.MANIFEST,
            ):
                return str(locked.state)
            locked.state = MigrationState.STOPPED
            locked.error = reason
            locked.save(update_fields=["state", "error", "updated"])
            record(
                tenant=self.tenant,
                actor=Actor.system("object migration"),
                action="objects.migration_stopped",
                outcome=Outcome.FAILURE,
                target=locked.direction,
                reason=f"stopped, resumes when the tenant migrates again: {reason}",
                details={"migration": str(locked.pk)},
            )
        return MigrationState.STOPPED


def _checked(plain: Iterable[bytes], sha256: str, size: int) -> Iterator[bytes]:
    """Pass the plaintext through, hashing it; raise _Mismatch at its end unless it
    has the manifest's size and SHA-256 (before the encryption makes its final
    segment, so a put of it fails and leaves nothing)."""
    digest = hashlib.sha256()
    seen = 0
    for piece in plain:
        digest.update(piece)
        seen += len(piece)
        yield piece
    if seen != size or not hmac.compare_digest(digest.hexdigest(), sha256):
        raise _Mismatch


def _manifest_pages(migration_id: Any) -> Iterator[list[tuple[str, int]]]:
    after = 0
    while True:
        page = list(
            MigrationItem.objects.filter(migration_id=migration_id, id__gt=after)
            .order_by("id")
            .values_list("id", "key", "version", "size")[:2000]
        )
        if not page:
            return
        yield [(blob_name(key, version), size) for _id, key, version, size in page]
        after = page[-1][0]


def _named(keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return f": {shown}{', ...' if len(keys) > _SHOWN else ''}"


def _send_finished(migration: ObjectMigration) -> None:
    """Tell keys, after commit, that the move ended: the tenant may reach its final state.

    Idempotent on the keys side; should a worker die before this runs, the
    resumed key move asks again (`objects_move_next`).
    """
    tenant_id, direction = str(migration.tenant_id), migration.direction
    succeeded = migration.state == MigrationState.DONE
    transaction.on_commit(
        lambda: data_move_finished(tenant_id=tenant_id, direction=direction, succeeded=succeeded)
    )
