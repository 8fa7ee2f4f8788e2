"""Re-encrypting records from older DEKs to the current one, a batch at a time.

On PostgreSQL a batch is: read the next rows after the checkpoint under any
other DEK (locking them), decrypt and re-seal every field in memory, and write
them back with ONE `UPDATE ... FROM unnest(arrays)` statement; the arrays travel
in psycopg's binary format. On SQLite (the embedded default) the same batch is
written with executemany.
"""

from __future__ import annotations

import uuid
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import connection

from archive.fields import ALL_FIELDS, FIELDS_BY_KIND
from keys.ciphertext import binding, dek_id_of, header, open_, seal
from keys.models import DataKey
from keys.runtime import envelope
from tenants.models import Tenant

_COLUMNS = ", ".join(ALL_FIELDS)


def _select_sql(lock: bool) -> str:
    return (
        f"SELECT id, uid, kind, {_COLUMNS} FROM archive_record "  # noqa: S608 - fixed names
        "WHERE tenant_id = %s AND dek_id <> %s AND id > %s ORDER BY id LIMIT %s"
        + (" FOR UPDATE" if lock else "")
    )


def _update_sql_postgres() -> str:
    sets = ", ".join(f"{name} = u.{name}" for name in ALL_FIELDS)
    arrays = ", ".join("%s::bytea[]" for _ in ALL_FIELDS)
    return (
        f"UPDATE archive_record AS r SET dek_id = %s, {sets} "  # noqa: S608 - fixed names
        f"FROM unnest(%s::bigint[], {arrays}) AS u(id, {_COLUMNS}) WHERE r.id = u.id"
    )


def reencrypt_rows(tenant_id: str, rows: list[tuple[Any, ...]], target_id: int) -> list[list[Any]]:
    """Re-seal every field of `rows` (id, uid, kind, *fields) under the target DEK.

    Returns one column per field (plus the ids first), ready for unnest().
    """
    env = envelope()
    target = env.key_for(tenant_id, target_id)
    head = header(target_id)
    keys: dict[int, AESGCM] = {}
    ids: list[int] = []
    columns: list[list[bytes | None]] = [[] for _ in ALL_FIELDS]
    for row in rows:
        ids.append(row[0])
        uid, kind = str(uuid.UUID(str(row[1]))), str(row[2])
        allowed = FIELDS_BY_KIND[kind]
        for index, name in enumerate(ALL_FIELDS):
            value = row[3 + index]
            if value is None or name not in allowed:
                columns[index].append(None if value is None else bytes(value))
                continue
            blob = bytes(value)
            dek_id = dek_id_of(blob)
            aead = keys.get(dek_id)
            if aead is None:
                aead = keys[dek_id] = env.key_for(tenant_id, dek_id)
            bound = binding(tenant_id, kind, name, uid)
            columns[index].append(seal(target, head, open_(aead, blob, bound), bound))
    return [ids, *columns]


def reencrypt_batch(*, tenant: Tenant, target: DataKey, after_id: int) -> tuple[int, int]:
    """Re-encrypt the next batch after `after_id`; return (rows done, last id).

    Runs inside the caller's transaction, so the caller moves its checkpoint
    in the same commit.
    """
    size = settings.KEYWARD_REENCRYPT_BATCH
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        tenant_param = tenant.pk if postgres else tenant.pk.hex  # SQLite keeps UUIDs as hex
        cursor.execute(_select_sql(postgres), [tenant_param, target.pk, after_id, size])
        rows = cursor.fetchall()
        if not rows:
            return 0, after_id
        envelope().spend(
            str(tenant.pk),
            target.pk,
            sum(1 for row in rows for value in row[3:] if value is not None),
        )
        ids, *columns = reencrypt_rows(str(tenant.pk), rows, target.pk)
        if postgres:
            cursor.execute(_update_sql_postgres(), [target.pk, ids, *columns])
        else:
            sets = ", ".join(f"{name} = %s" for name in ALL_FIELDS)
            cursor.executemany(
                f"UPDATE archive_record SET dek_id = %s, {sets} WHERE id = %s",  # noqa: S608
                [[target.pk, *(column[i] for column in columns), ids[i]] for i in range(len(ids))],
            )
    return len(rows), int(rows[-1][0])
