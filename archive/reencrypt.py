"""Re-encrypting records from older DEKs to the current one, a batch at a time.

On PostgreSQL a batch is: read the next sealed rows after the checkpoint that
are under any other DEK of the tenant (binary results: bytea arrives as bytes),
decrypt and re-seal each record's personal fields in memory, COPY the new
values (binary) into a temporary table and write them back with ONE
`UPDATE ... FROM` it. On SQLite (the embedded default) the same batch is
written with executemany.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import connection

from archive.bulk import is_postgres, raw_cursor
from archive.services import PII_FIELD
from keys.ciphertext import (
    HEADER_SIZE,
    NONCE_SIZE,
    OVERHEAD,
    UNAUTHENTIC,
    CiphertextMalformed,
    CiphertextUnauthentic,
    binding_prefix,
    header,
    next_nonce,
)
from keys.models import DataKey, DekState
from keys.runtime import envelope
from tenants.models import Tenant

# rows of (record id, uid, kind, dek id, sealed pii, ...) -> (record ids, new sealed pii)
Transform = Callable[[str, list[tuple[Any, ...]], int], tuple[list[int], list[bytes]]]

_SELECT = (
    "SELECT s.record_id, r.uid{text}, r.kind, s.dek_id, s.pii{version} "
    "FROM archive_sealedfields AS s JOIN archive_record AS r ON r.id = s.record_id "
    "WHERE s.dek_id IN ({deks}) AND s.record_id > %s ORDER BY s.record_id LIMIT %s"
)
_CREATE_BATCH_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS reencrypt_batch "
    "(id bigint PRIMARY KEY, pii bytea NOT NULL, version text NOT NULL) ON COMMIT DELETE ROWS"
)
# Optimistic, instead of locking every row read: a row changed since it was
# read (its xmin moved) is left alone, and a later pass picks it up.
_UPDATE_FROM_BATCH = (
    "UPDATE archive_sealedfields AS s SET dek_id = %s, pii = b.pii "
    "FROM reencrypt_batch AS b WHERE s.record_id = b.id AND s.xmin::text = b.version "
    # The range lets the join start at the batch instead of the table's first row.
    "AND s.record_id BETWEEN %s AND %s"
)


def _older_deks(tenant: Tenant, target: DataKey) -> list[int]:
    """The tenant's decrypt-only DEKs: data under them moves to the target.

    Never the active DEK: data written under it is already where it should be.
    """
    return list(
        DataKey.objects.filter(tenant=tenant, state=DekState.RETIRING)
        .exclude(pk=target.pk)
        .values_list("pk", flat=True)
    )


def reencrypt_rows(
    tenant_id: str, rows: list[tuple[Any, ...]], target_id: int
) -> tuple[list[int], list[bytes]]:
    """Re-seal each row's personal fields under the target DEK.

    The loop is `open_` and `seal` unrolled, with the associated data built
    from a per-kind prefix: this is the hot loop of every re-encryption.
    """
    env = envelope()
    target = env.key_for(tenant_id, target_id)
    head = header(target_id)
    keys: dict[int, AESGCM] = {}
    prefixes: dict[str, bytes] = {}
    ids: list[int] = []
    values: list[bytes] = []
    for pk, uid, kind, dek_id, pii, *_ in rows:
        aead = keys.get(dek_id)
        if aead is None:
            aead = keys[dek_id] = env.key_for(tenant_id, dek_id)
        prefix = prefixes.get(kind)
        if prefix is None:
            prefix = prefixes[kind] = binding_prefix(tenant_id, kind, PII_FIELD)
        uid_bytes = str(uid).encode()
        bound = prefix + len(uid_bytes).to_bytes(2, "big") + uid_bytes
        blob = bytes(pii)
        if len(blob) < OVERHEAD or blob[:HEADER_SIZE] != header(dek_id):
            raise CiphertextMalformed(f"record {pk}: sealed fields do not name DEK {dek_id}")
        try:
            plain = aead.decrypt(
                blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
                blob[HEADER_SIZE + NONCE_SIZE :],
                blob[:HEADER_SIZE] + bound,
            )
        except InvalidTag:
            raise CiphertextUnauthentic(f"record {pk}: {UNAUTHENTIC}") from None
        nonce = next_nonce()
        ids.append(pk)
        values.append(head + nonce + target.encrypt(nonce, plain, head + bound))
    return ids, values


@dataclass
class Batch:
    """Rows read and re-sealed, waiting to be written."""

    ids: list[int]
    values: list[bytes]
    versions: list[str]  # each row's xmin when read; empty on SQLite

    @property
    def last_id(self) -> int:
        return self.ids[-1]


def read_batch(
    *, tenant: Tenant, target: DataKey, after_id: int, transform: Transform | None = None
) -> Batch | None:
    """Read the next rows after `after_id` under an older DEK and re-seal them (no writes)."""
    size = settings.KEYWARD_REENCRYPT_BATCH
    tenant_id = str(tenant.pk)
    older = _older_deks(tenant, target)
    if not older:
        return None
    deks = ", ".join(["%s"] * len(older))
    if is_postgres():
        with raw_cursor() as cursor:
            cursor.execute(
                _SELECT.format(text="::text", version=", s.xmin::text", deks=deks),
                [*older, after_id, size],
                binary=True,
            )
            rows = cursor.fetchall()
    else:
        with connection.cursor() as django_cursor:
            django_cursor.execute(
                _SELECT.format(text="", version="", deks=deks), [*older, after_id, size]
            )
            # SQLite keeps UUIDs as 32 hex digits; the binding uses the usual form.
            rows = [
                (pk, str(uuid.UUID(uid)), kind, dek_id, pii)
                for pk, uid, kind, dek_id, pii in django_cursor.fetchall()
            ]
    if not rows:
        return None
    envelope().spend(tenant_id, target.pk, len(rows))
    ids, values = (transform or reencrypt_rows)(tenant_id, rows, target.pk)
    versions = [row[5] for row in rows] if is_postgres() else []
    return Batch(ids, values, versions)


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
        cursor.execute("ANALYZE reencrypt_batch")
        cursor.execute(_UPDATE_FROM_BATCH, [target.pk, batch.ids[0], batch.last_id])
        return cursor.rowcount


def reencrypt_batch(
    *, tenant: Tenant, target: DataKey, after_id: int, transform: Transform | None = None
) -> tuple[int, int, int]:
    """Read and write one batch: (rows read, rows rewritten, last id read)."""
    batch = read_batch(tenant=tenant, target=target, after_id=after_id, transform=transform)
    if batch is None:
        return 0, 0, after_id
    return len(batch.ids), write_batch(batch, target), batch.last_id


class BatchReader:
    """Reads (and re-seals) the next batch while the caller writes the current one.

    On PostgreSQL a thread with its own connection reads one batch ahead, so
    the decrypt/encrypt work and the database's UPDATE overlap on two cores.
    Reading needs no lock (writes check each row's xmin) and reads from the
    checkpoint on, so a crash anywhere still resumes exactly. On SQLite
    (one writer, embedded) it reads in the caller's thread.
    """

    def __init__(
        self,
        *,
        tenant: Tenant,
        target: DataKey,
        after_id: int,
        transform: Transform | None = None,
    ) -> None:
        self._args = {"tenant": tenant, "target": target, "transform": transform}
        self._after = after_id
        self._threaded = is_postgres()
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._threaded:
            self._thread = threading.Thread(target=self._run, name="reencrypt-reader", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            after = self._after
            while not self._stop.is_set():
                batch = read_batch(after_id=after, **self._args)  # type: ignore[arg-type]
                self._put(batch)
                if batch is None:
                    return
                after = batch.last_id
        except BaseException as exc:
            self._put(exc)
        finally:
            connection.close()  # this thread's connection

    def _put(self, item: Batch | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next(self) -> Batch | None:
        if not self._threaded:
            batch = read_batch(after_id=self._after, **self._args)  # type: ignore[arg-type]
            if batch is not None:
                self._after = batch.last_id
            return batch
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
