"""Re-encrypting records from older DEKs to the current one, a batch at a time.

On PostgreSQL a batch is: read the tenant's next sealed rows after the
checkpoint that are under any other DEK of the tenant (through the tenant's
record index; binary results: bytea arrives as bytes), decrypt and re-seal
each record's personal fields in memory (reading either ciphertext format,
writing the current one), COPY the new values (binary) into a temporary table
and write them back with ONE `UPDATE ... FROM` it, which changes no indexed
column, so PostgreSQL rewrites each row on its own page (HOT, see
`SealedFields`); two batches are in flight at once (`ReencryptionPass`).
On SQLite (the embedded default) the same batch is written with executemany,
one at a time.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import connection, transaction

from crypto.ciphertext import (
    HEADER_SIZE,
    NONCE_SIZE,
    OVERHEAD,
    UNAUTHENTIC,
    CiphertextMalformed,
    CiphertextUnauthentic,
    binding_prefix,
    header,
    random_nonces,
)
from keys.models import DataKey, DekState
from keys.runtime import envelope
from records.bulk import is_postgres, raw_cursor
from records.fields import PII_FIELD
from tenants.models import Tenant

# A tenant's records in id order (Record's (tenant, id) index), each with its
# sealed fields, keeping those under an older DEK. Sealed fields have no index
# on their DEK: re-encryption's updates then touch no index (see SealedFields).
_SELECT = (
    "SELECT r.id, r.uid, r.kind, s.dek_id, s.pii "
    "FROM archive_record AS r JOIN archive_sealedfields AS s ON s.record_id = r.id "
    "WHERE r.tenant_id = %s AND r.id > %s AND r.id <= %s AND s.dek_id IN ({deks}) "
    "ORDER BY r.id LIMIT %s"
)
_PG_SELECT = (
    "SELECT r.id, r.uid::text, r.kind, s.dek_id, s.pii, s.version "
    "FROM archive_record AS r CROSS JOIN LATERAL "
    # A lookup by primary key per record, in the index's order, stopping at the
    # batch's end. OFFSET 0 keeps the planner from making this a join it would
    # plan from estimates: a hash join reads every tenant's sealed fields.
    "(SELECT dek_id, pii, xmin::text AS version FROM archive_sealedfields "
    "WHERE record_id = r.id OFFSET 0) AS s "
    "WHERE r.tenant_id = %s AND r.id > %s AND r.id <= %s AND s.dek_id = ANY(%s) "
    "ORDER BY r.id LIMIT %s"
)
_CREATE_BATCH_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS reencrypt_batch "
    "(id bigint NOT NULL, pii bytea NOT NULL, version text NOT NULL) ON COMMIT DELETE ROWS"
)
# Optimistic, instead of locking every row read: a row changed since it was
# read (its xmin moved) is left alone, and a later pass picks it up.
_UPDATE_FROM_BATCH = (
    "UPDATE archive_sealedfields AS s SET dek_id = %s, pii = b.pii "
    "FROM reencrypt_batch AS b WHERE s.record_id = b.id AND s.xmin::text = b.version "
    # The range lets the join start at the batch instead of the table's first row.
    "AND s.record_id BETWEEN %s AND %s"
)
# Connections whose batch table has statistics. Analyzed once: the row count
# per page stays true from batch to batch, and the planner scales it by the
# table's current size, so the plan stays a join over the batch's range.
_analyzed: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

# Batches written at once on PostgreSQL, each by a thread with its own
# connection: the database's side of a batch (its read, COPY and UPDATE) is
# most of the cost, and one backend does it on one core while this process
# re-seals the next batch on the other. SQLite has one writer: one batch at a
# time. (A third worker was measured: no faster on two cores, where the GIL
# and the backends compete.)
WORKERS = 2


def older_deks(tenant: Tenant, target: DataKey) -> list[int]:
    """The tenant's decrypt-only DEKs: data under them moves to the target.

    Never the active DEK: data written under it is already where it should be.
    """
    return list(
        DataKey.objects.filter(tenant=tenant, state=DekState.RETIRING)
        .exclude(pk=target.pk)
        .values_list("pk", flat=True)
    )


def reencrypt_rows(
    tenant_id: str, rows: Sequence[Row], target_id: int
) -> tuple[list[int], list[bytes]]:
    """Re-seal each row's personal fields under the target DEK.

    The loop is `open_` and `seal` unrolled, with the associated data built
    from a prefix per kind and length of record id: this is the hot loop of
    every re-encryption.
    It opens format 1 and format 2 ciphertexts, each with its format's key,
    and seals format 2 only: re-encrypting moves format 1 data to format 2.
    """
    env = envelope()
    encrypt = env.key_for(tenant_id, target_id).sealing.encrypt
    head = header(target_id)
    # Per source DEK, the key for each header its rows can carry: one lookup
    # of a blob's header checks its format and DEK id and picks its key.
    openers: dict[int, dict[bytes, AESGCM]] = {}
    # Per (kind, length of the record id): the associated data up to the id.
    prefixes: dict[tuple[str, int], bytes] = {}
    ids: list[int] = []
    values: list[bytes] = []
    add_id, add_value = ids.append, values.append
    # One read of the OS's generator per batch rather than a call per row.
    nonces = random_nonces(len(rows))
    nonce_at, minimum = HEADER_SIZE + NONCE_SIZE, OVERHEAD
    for (pk, uid, kind, dek_id, blob, _), nonce in zip(rows, nonces, strict=True):
        by_header = openers.get(dek_id)
        if by_header is None:
            by_header = openers[dek_id] = env.key_for(tenant_id, dek_id).by_header(dek_id)
        uid_bytes = uid.encode()
        n = len(uid_bytes)
        prefix = prefixes.get((kind, n))
        if prefix is None:
            start = binding_prefix(tenant_id, kind, PII_FIELD)
            prefix = prefixes[(kind, n)] = start + n.to_bytes(2, "big")
        bound = prefix + uid_bytes
        blob_head = blob[:HEADER_SIZE]
        aead = by_header.get(blob_head) if len(blob) >= minimum else None
        if aead is None:
            raise CiphertextMalformed(
                f"record {pk}: sealed fields are not a ciphertext of a known format under "
                f"DEK {dek_id}"
            )
        try:
            plain = aead.decrypt(blob[HEADER_SIZE:nonce_at], blob[nonce_at:], blob_head + bound)
        except InvalidTag:
            raise CiphertextUnauthentic(f"record {pk}: {UNAUTHENTIC}") from None
        add_id(pk)
        add_value(head + nonce + encrypt(nonce, plain, head + bound))
    return ids, values


@dataclass
class Batch:
    """Rows read and re-sealed, waiting to be written."""

    ids: list[int]
    values: list[bytes]
    # Each row's xmin when read, for the optimistic check on PostgreSQL; None on
    # SQLite, whose one writer needs none.
    versions: list[str | None]

    @property
    def last_id(self) -> int:
        return self.ids[-1]


# A row read_rows returns: (record id, uid as text, kind, DEK id, sealed blob,
# version), the version being the row's xmin as text on PostgreSQL and None on
# SQLite. One shape on both, so reencrypt_rows unpacks it without a list.
Row = tuple[int, str, str, int, bytes, str | None]

# The upper bound of a pass that covers every record id.
LAST_ID = 2**63 - 1


def read_rows(
    *, tenant: Tenant, older: list[int], after_id: int, size: int, until_id: int = LAST_ID
) -> list[Row]:
    """The tenant's next `size` sealed rows (`Row`) after `after_id` (up to
    `until_id`) under any of the `older` DEKs."""
    if not older:
        return []
    if is_postgres():
        with raw_cursor() as cursor:
            cursor.execute(_PG_SELECT, [tenant.pk, after_id, until_id, older, size], binary=True)
            return cast(list[Row], cursor.fetchall())
    deks = ", ".join(["%s"] * len(older))
    with connection.cursor() as django_cursor:
        django_cursor.execute(
            _SELECT.format(deks=deks), [tenant.pk.hex, after_id, until_id, *older, size]
        )
        # SQLite keeps UUIDs as 32 hex digits; the binding uses the usual form.
        return [
            (pk, str(uuid.UUID(uid)), kind, dek_id, pii, None)
            for pk, uid, kind, dek_id, pii in django_cursor.fetchall()
        ]


def reseal(*, tenant: Tenant, target: DataKey, rows: list[Row]) -> Batch:
    """Re-seal rows that `read_rows` returned (no database access but the DEK budget)."""
    tenant_id = str(tenant.pk)
    envelope().spend(tenant_id, target.pk, len(rows))
    # Looked up at each call: the benchmark's baseline swaps it for a copy
    # without cryptography in its own process.
    ids, values = reencrypt_rows(tenant_id, rows, target.pk)
    return Batch(ids, values, [row[5] for row in rows])


def read_batch(*, tenant: Tenant, target: DataKey, after_id: int) -> Batch | None:
    """Read the next rows after `after_id` under an older DEK and re-seal them (no writes)."""
    rows = read_rows(
        tenant=tenant,
        older=older_deks(tenant, target),
        after_id=after_id,
        size=settings.KEYWARD_REENCRYPT_BATCH,
    )
    if not rows:
        return None
    return reseal(tenant=tenant, target=target, rows=rows)


def write_batch(batch: Batch, target: DataKey) -> int:
    """Write a batch in the caller's transaction; return the rows rewritten.

    A row changed since it was read is skipped (its xmin moved); the caller's
    next pass re-reads it.
    """
    if not is_postgres():
        with connection.cursor() as django_cursor:
            django_cursor.executemany(
                "UPDATE archive_sealedfields SET dek_id = %s, pii = %s WHERE record_id = %s",
                [(target.pk, v, pk) for pk, v in zip(batch.ids, batch.values, strict=True)],
            )
        return len(batch.ids)
    with raw_cursor() as cursor:
        cursor.execute(_CREATE_BATCH_TABLE)
        with cursor.copy(
            "COPY reencrypt_batch (id, pii, version) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "bytea", "text"])
            for row in zip(batch.ids, batch.values, batch.versions, strict=True):
                copy.write_row(row)
        if cursor.connection not in _analyzed:
            cursor.execute("ANALYZE reencrypt_batch")
            _analyzed.add(cursor.connection)
        cursor.execute(_UPDATE_FROM_BATCH, [target.pk, batch.ids[0], batch.last_id])
        return cursor.rowcount


def reencrypt_batch(*, tenant: Tenant, target: DataKey, after_id: int) -> tuple[int, int, int]:
    """Read and write one batch: (rows read, rows rewritten, last id read)."""
    batch = read_batch(tenant=tenant, target=target, after_id=after_id)
    if batch is None:
        return 0, 0, after_id
    return len(batch.ids), write_batch(batch, target), batch.last_id


# Called in each batch's transaction, after its write, with the rows rewritten
# and the checkpoint; False when the job must stop (the batch is rolled back).
SaveProgress = Callable[[int, int], bool]


class ReencryptionPass:
    """One pass over the records after a checkpoint (up to `until_id`), batches
    written in parallel.

    1. A worker takes the next batch under a lock: one SELECT, in record order,
       after the previous batch taken. Batches never overlap.
    2. Outside the lock it re-seals the rows and writes them in ONE
       transaction together with the job's progress (`save`): a batch and its
       progress commit or vanish together. Re-sealing is Python around two
       short AES-GCM calls per row, and two threads re-seal no faster than
       one (pinned pyca/cryptography 50.0.2: 1.23M and 1.16M seals of 368
       bytes per second), so the threads overlap one batch's crypto with
       another's database work, not with each other's.
    3. The checkpoint saved with batch n is the end of the longest run of
       batches 0..m committed so far, n included: every row up to it is
       written. A crash can leave later batches committed beyond the
       checkpoint; a rerun reads from the checkpoint, and their rows, now under
       the target DEK, are no longer selected. Nothing is skipped and nothing
       is counted twice.
    4. A row changed by another writer since it was read is not overwritten
       (the xmin check in `write_batch`); the caller's next pass redoes it.

    The caller's thread is a worker too; on SQLite (one writer) it is the only one.
    """

    def __init__(
        self,
        *,
        tenant: Tenant,
        target: DataKey,
        after_id: int,
        save: SaveProgress,
        until_id: int = LAST_ID,
    ) -> None:
        self._tenant, self._target, self._save = tenant, target, save
        self._until = until_id
        self._older = older_deks(tenant, target)
        self._size = settings.KEYWARD_REENCRYPT_BATCH
        self._lock = threading.Lock()
        self._after = after_id  # where the next batch starts
        self._start = after_id
        self._ends: list[int] = []  # last record id of each batch taken
        self._committed: set[int] = set()  # batch numbers beyond the committed run
        self._run_end = -1  # batches 0.._run_end are committed
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self.halted = False  # `save` said stop

    def run(self) -> None:
        """Run the pass to its end (or until `save` says stop); raise a worker's error.

        The caller's thread is one of the workers. Its connection outlives the
        pass (CONN_MAX_AGE), and with it the batch table, its statistics and
        the backend's warm caches: a worker on a new connection pays for all
        of them again (about 40 ms of PostgreSQL's CPU per connection, which
        a job cut into parts paid on every worker of every part).
        """
        helpers = (
            [
                threading.Thread(target=self._thread, name=f"reencrypt-{n}", daemon=True)
                for n in range(1, WORKERS)
            ]
            if is_postgres()
            else []
        )
        for thread in helpers:
            thread.start()
        self._work()
        for thread in helpers:
            thread.join()
        if self._errors:
            raise self._errors[0]

    def _thread(self) -> None:
        try:
            self._work()
        finally:
            connection.close()  # this thread's connection

    def _work(self) -> None:
        try:
            while (taken := self._take()) is not None:
                number, rows = taken
                batch = reseal(tenant=self._tenant, target=self._target, rows=rows)
                with transaction.atomic():
                    if is_postgres():
                        # Not waiting for the WAL flush is safe here: a batch
                        # lost in a server crash loses its checkpoint with it
                        # and is redone by the rerun, and any later synchronous
                        # commit (the DEK's retirement above all) flushes the
                        # WAL up to and past it first.
                        with raw_cursor() as cursor:
                            cursor.execute("SET LOCAL synchronous_commit = off")
                    # Looked up at each call: tests wrap it to simulate a crash.
                    rewritten = write_batch(batch, self._target)
                    if not self._save(rewritten, self._checkpoint_with(number)):
                        transaction.set_rollback(True)
                        self.halted = True
                        self._stop.set()
                        return
                self._committed_batch(number)
        except BaseException as exc:
            self._errors.append(exc)
            self._stop.set()

    def _take(self) -> tuple[int, list[Row]] | None:
        with self._lock:
            if self._stop.is_set():
                return None
            rows = read_rows(
                tenant=self._tenant,
                older=self._older,
                after_id=self._after,
                size=self._size,
                until_id=self._until,
            )
            if not rows:
                self._stop.set()
                return None
            self._after = rows[-1][0]
            self._ends.append(self._after)
            return len(self._ends) - 1, rows

    def _checkpoint_with(self, number: int) -> int:
        """The checkpoint if batch `number` commits now."""
        with self._lock:
            end = self._run_end
            while end + 1 == number or end + 1 in self._committed:
                end += 1
            return self._ends[end] if end >= 0 else self._start

    def _committed_batch(self, number: int) -> None:
        with self._lock:
            self._committed.add(number)
            while self._run_end + 1 in self._committed:
                self._run_end += 1
                self._committed.discard(self._run_end)
