"""Re-encrypting records from older DEKs to the current one, a batch at a time.

On PostgreSQL a batch is: read the next rows after the checkpoint that are
under any other DEK (locking them; binary results, so bytea arrives as bytes),
decrypt and re-seal each record's personal fields in memory, COPY the new
values (binary) into a temporary table and write them back with ONE
`UPDATE ... FROM` it. On SQLite (the embedded default) the same batch is
written with executemany.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import connection

from archive.bulk import is_postgres, raw_cursor
from archive.services import PII_FIELD
from keys.ciphertext import binding, header, open_, seal
from keys.models import DataKey
from keys.runtime import envelope
from tenants.models import Tenant

# (id, uid, kind, dek_id, pii) -> (ids, new pii values)
Transform = Callable[[str, list[tuple[Any, ...]], int], tuple[list[int], list[bytes]]]

_SELECT = (
    "SELECT id, uid, kind, dek_id, pii{version} FROM archive_record "
    "WHERE tenant_id = %s AND dek_id <> %s AND id > %s ORDER BY id LIMIT %s"
)
_CREATE_BATCH_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS reencrypt_batch "
    "(id bigint PRIMARY KEY, pii bytea NOT NULL, version text NOT NULL) ON COMMIT DELETE ROWS"
)
# Optimistic, instead of locking every row read: a row changed since it was
# read (its xmin moved) is left alone, and a later pass picks it up.
_UPDATE_FROM_BATCH = (
    "UPDATE archive_record AS r SET dek_id = %s, pii = b.pii "
    "FROM reencrypt_batch AS b WHERE r.id = b.id AND r.xmin::text = b.version"
)


def reencrypt_rows(
    tenant_id: str, rows: list[tuple[Any, ...]], target_id: int
) -> tuple[list[int], list[bytes]]:
    """Re-seal each row's personal fields under the target DEK."""
    env = envelope()
    target = env.key_for(tenant_id, target_id)
    head = header(target_id)
    keys: dict[int, AESGCM] = {}
    ids: list[int] = []
    values: list[bytes] = []
    for pk, uid, kind, dek_id, pii, *_ in rows:
        aead = keys.get(dek_id)
        if aead is None:
            aead = keys[dek_id] = env.key_for(tenant_id, dek_id)
        bound = binding(tenant_id, kind, PII_FIELD, str(uid))
        ids.append(pk)
        values.append(seal(target, head, open_(aead, bytes(pii), bound), bound))
    return ids, values


def reencrypt_batch(
    *, tenant: Tenant, target: DataKey, after_id: int, transform: Transform | None = None
) -> tuple[int, int, int]:
    """Re-encrypt the next batch after `after_id`: (rows read, rows rewritten, last id read).

    Runs inside the caller's transaction, so the caller moves its checkpoint
    in the same commit.
    """
    size = settings.KEYWARD_REENCRYPT_BATCH
    tenant_id = str(tenant.pk)
    transform = transform or reencrypt_rows
    if is_postgres():
        with raw_cursor() as cursor:
            cursor.execute(
                _SELECT.format(version=", xmin::text"),
                [tenant.pk, target.pk, after_id, size],
                binary=True,
            )
            rows = cursor.fetchall()
            if not rows:
                return 0, 0, after_id
            envelope().spend(tenant_id, target.pk, len(rows))
            ids, values = transform(tenant_id, rows, target.pk)
            cursor.execute(_CREATE_BATCH_TABLE)
            with cursor.copy(
                "COPY reencrypt_batch (id, pii, version) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "bytea", "text"])
                for row, pk, value in zip(rows, ids, values, strict=True):
                    copy.write_row((pk, value, row[5]))
            cursor.execute("ANALYZE reencrypt_batch")
            cursor.execute(_UPDATE_FROM_BATCH, [target.pk])
            updated = cursor.rowcount
        return len(rows), updated, int(rows[-1][0])
    with connection.cursor() as django_cursor:
        # SQLite keeps UUIDs as 32 hex digits.
        django_cursor.execute(
            _SELECT.format(version=""), [tenant.pk.hex, target.pk, after_id, size]
        )
        rows = [
            (pk, uuid.UUID(str(uid)), kind, dek_id, pii)
            for pk, uid, kind, dek_id, pii in django_cursor.fetchall()
        ]
        if not rows:
            return 0, 0, after_id
        envelope().spend(tenant_id, target.pk, len(rows))
        ids, values = transform(tenant_id, rows, target.pk)
        django_cursor.executemany(
            "UPDATE archive_record SET dek_id = %s, pii = %s WHERE id = %s",
            [(target.pk, value, pk) for pk, value in zip(ids, values, strict=True)],
        )
    return len(rows), len(rows), int(rows[-1][0])
