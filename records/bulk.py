"""Bulk SQL for records: COPY in PostgreSQL's binary format, batched ORM on SQLite.

Django's psycopg backend binds parameters on the client, which turns every
bytea into hex text inside the SQL string; for bulk work that costs more than
the cryptography. Here the raw psycopg connection (same transaction) streams
binary COPY instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from django.db import connection
from django.utils import timezone

from records.models import Record, SealedFields

RECORD_COLUMNS = ("id", "uid", "tenant_id", "kind", "external_id", "created")
RECORD_TYPES = ["int8", "uuid", "uuid", "text", "text", "timestamptz"]
SEALED_COLUMNS = ("record_id", "dek_id", "pii")
SEALED_TYPES = ["int8", "int8", "bytea"]


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def raw_cursor() -> psycopg.Cursor[Any]:
    """A server-binding psycopg cursor on Django's connection (and transaction)."""
    connection.ensure_connection()
    pg = connection.connection
    assert isinstance(pg, psycopg.Connection)
    return psycopg.Cursor(pg)


def copy_rows(
    table: str, columns: Sequence[str], types: list[str], rows: Iterable[Sequence[Any]]
) -> None:
    """COPY rows into `table` in PostgreSQL's binary format, in the caller's transaction.

    Columns left out take their defaults (an id from its sequence).
    """
    with (
        raw_cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def insert_records(rows: Sequence[Record]) -> list[Record]:
    """Insert records and their sealed fields (`record.sealed`); every row gets its id."""
    if not rows:
        return []
    if not is_postgres():
        created = Record.objects.bulk_create(rows)
        SealedFields.objects.bulk_create([row.sealed for row in created])
        return created
    now = timezone.now()
    with raw_cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('archive_record', 'id')) "
            "FROM generate_series(1, %s)",
            [len(rows)],
        )
        ids = [row[0] for row in cursor.fetchall()]
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
    for record in rows:
        record._state.adding = False
        record._state.db = connection.alias
        record.sealed.record_id = record.pk
        record.sealed._state.adding = False
        record.sealed._state.db = connection.alias
    return list(rows)
