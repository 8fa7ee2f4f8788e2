"""Bulk SQL for records: COPY in PostgreSQL's binary format, batched ORM on SQLite.

Django's psycopg backend binds parameters on the client, which turns every
bytea into hex text inside the SQL string; for bulk work that costs more than
the cryptography. Here the raw psycopg connection (same transaction) streams
binary COPY instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from django.db import connection, transaction
from django.utils import timezone

from api.idempotency import CLAIM_EXISTED, CLAIM_INSERT, KeyClaim, KeyClaimed
from records.models import Record, SealedFields

RECORD_COLUMNS = ("id", "uid", "tenant_id", "kind", "external_id", "created")
RECORD_TYPES = ["int8", "uuid", "uuid", "text", "text", "timestamptz"]
SEALED_COLUMNS = ("record_id", "dek_id", "pii")
SEALED_TYPES = ["int8", "int8", "bytea"]


def one_statement(*, savepoint: bool) -> contextlib.AbstractContextManager[Any]:
    """Where a write that is one statement runs: all or nothing on its own, so no
    transaction of its own. In a caller's transaction, a savepoint keeps its
    failure from spoiling that transaction, unless the caller ends it on any
    error (`savepoint=False`)."""
    if connection.in_atomic_block and savepoint:
        return transaction.atomic()
    return contextlib.nullcontext()


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


@contextlib.contextmanager
def raw_cursor() -> Iterator[psycopg.Cursor[Any]]:
    """A server-binding psycopg cursor on Django's connection (and transaction).

    psycopg's errors pass through Django's wrapper as Django's own cursors'
    do: a connection lost under a statement (a database restart) is then the
    OperationalError that the tasks retry on, and marks the connection so
    that the next task's start closes it instead of reusing it dead.
    """
    connection.ensure_connection()
    pg = connection.connection
    assert isinstance(pg, psycopg.Connection)
    with connection.wrap_database_errors, psycopg.Cursor(pg) as cursor:
        yield cursor


def _logged(sql: str, started: float) -> None:
    """Put a statement sent past Django's cursor in its query log, like its own.

    So that CaptureQueriesContext, the debug toolbar and DEBUG's
    connection.queries count every round trip of a write, COPY included.
    """
    if connection.queries_logged:
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})


def copy_rows(
    table: str, columns: Sequence[str], types: list[str], rows: Iterable[Sequence[Any]]
) -> None:
    """COPY rows into `table` in PostgreSQL's binary format, in the caller's transaction.

    Columns left out take their defaults (an id from its sequence).
    """
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    started = time.monotonic()
    with raw_cursor() as cursor, cursor.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
    _logged(sql, started)


def insert_records(rows: Sequence[Record]) -> list[Record]:
    """Insert records and their sealed fields (`record.sealed`); every row gets its id."""
    if not rows:
        return []
    if not is_postgres():
        created = Record.objects.bulk_create(rows)
        SealedFields.objects.bulk_create([row.sealed for row in created])
        return created
    now = timezone.now()
    sql = (
        "SELECT nextval(pg_get_serial_sequence('archive_record', 'id')) FROM generate_series(1, %s)"
    )
    started = time.monotonic()
    with raw_cursor() as cursor:
        cursor.execute(sql, [len(rows)])
        ids = [row[0] for row in cursor.fetchall()]
    _logged(sql, started)
    for record, pk in zip(rows, ids, strict=True):
        record.pk = pk
        record.created = now
    copy_rows(
        "archive_record",
        RECORD_COLUMNS,
        RECORD_TYPES,
        ((r.pk, r.uid, r.tenant_id, r.kind, r.external_id, now) for r in rows),
    )
    copy_rows(
        "archive_sealedfields",
        SEALED_COLUMNS,
        SEALED_TYPES,
        ((r.pk, r.sealed.dek_id, r.sealed.pii) for r in rows),
    )
    _mark_saved(rows)
    return list(rows)


# One record (a single API create): one statement, one round trip, for the
# tenant's state, the record, its sealed fields and its lookup rows, and with
# an Idempotency-Key its row ({claim}). The CTEs that write run whether or not
# the final SELECT reads them (PostgreSQL runs every data-modifying WITH
# exactly once); they write nothing when the tenant is paused, since
# everything hangs off `open`, and with a claim the record hangs off the
# claim's row being new ({gate}).
_INSERT_ONE = """
WITH open AS (
    SELECT 1 FROM tenants_tenant WHERE id = %(tenant)s AND NOT (state = ANY(%(paused)s))
    AND (
        %(key_versions)s::int4[] IS NULL
        OR %(key_versions)s::int4[] = (
            SELECT coalesce(array_agg(version ORDER BY version), '{{}}')
            FROM api_indexkey WHERE tenant_id = %(tenant)s AND state = ANY(%(key_states)s)
        )
    )
){claim}, record AS (
    INSERT INTO archive_record (uid, tenant_id, kind, external_id, created)
    SELECT %(uid)s, %(tenant)s, %(kind)s, %(external_id)s, %(now)s FROM open{gate}
    RETURNING id
), sealed AS (
    INSERT INTO archive_sealedfields (record_id, dek_id, pii)
    SELECT id, %(dek)s, %(pii)s FROM record
), lookup AS (
    INSERT INTO api_lookuprow (tenant_id, field, version, digest, record_id)
    SELECT %(tenant)s, f.field, f.version, f.digest, record.id
    FROM record,
        unnest(%(fields)s::text[], %(versions)s::int4[], %(digests)s::bytea[])
        AS f(field, version, digest)
)
SELECT (SELECT id FROM record), EXISTS (SELECT FROM open), {existed}
"""
_INSERT_ONE_UNCLAIMED = _INSERT_ONE.format(claim="", gate="", existed="false")
_INSERT_ONE_CLAIMED = _INSERT_ONE.format(
    claim=f", claim AS ({CLAIM_INSERT.format(source='open')})",
    gate=" WHERE EXISTS (SELECT FROM claim)",
    existed=CLAIM_EXISTED,
)


def insert_one_record(
    record: Record,
    lookup: Sequence[Sequence[Any]],
    *,
    paused: Iterable[str],
    key_versions: list[int] | None,
    key_states: Iterable[str],
    claim: KeyClaim | None = None,
) -> bool:
    """Insert one record, its sealed fields (`record.sealed`) and its lookup rows
    (index_keys.LookupValues; their record id is ignored), unless the tenant is
    in one of the `paused` states or, with `key_versions`, the versions of its
    index keys in `key_states` are not exactly those. True if written (the
    record has its id then).

    With a `claim`, its Idempotency-Key row is written by the same statement,
    and nothing is if the row exists already: KeyClaimed then, paused or not.
    """
    now = timezone.now()
    started = time.monotonic()
    params = {
        "tenant": record.tenant_id,
        "paused": sorted(paused),
        "key_versions": key_versions,
        "key_states": sorted(key_states),
        "uid": record.uid,
        "kind": record.kind,
        "external_id": record.external_id,
        "now": now,
        "dek": record.sealed.dek_id,
        "pii": record.sealed.pii,
        "fields": [row[1] for row in lookup],
        "versions": [row[2] for row in lookup],
        "digests": [row[3] for row in lookup],
    }
    sql = _INSERT_ONE_UNCLAIMED
    if claim is not None:
        sql = _INSERT_ONE_CLAIMED
        params |= claim.params()
    with raw_cursor() as cursor:
        cursor.execute(sql, params)
        record_id, open_, existed = cursor.fetchone() or (None, False, False)
    _logged(sql, started)
    if record_id is None:
        # The key's row was there (a retry: replayed even while the tenant is
        # paused, as before), or came in while this statement waited on it.
        if claim is not None and (existed or open_):
            raise KeyClaimed(claim.key)
        return False
    record.pk = record_id
    record.created = now
    _mark_saved([record])
    return True


def _mark_saved(rows: Sequence[Record]) -> None:
    for record in rows:
        record._state.adding = False
        record._state.db = connection.alias
        record.sealed.record_id = record.pk
        record.sealed._state.adding = False
        record.sealed._state.db = connection.alias
