"""`Idempotency-Key`: a retried create returns the first result and never stores twice."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from api.errors import ApiError
from api.models import IdempotencyKey
from tenants.models import Tenant

MAX_KEY_LENGTH = 255
Outcome = tuple[int, dict[str, Any]]


def request_fingerprint(method: str, path: str, body: Any) -> bytes:
    """A keyed hash (HMAC-SHA-256 under a key derived from SECRET_KEY) of the request
    as parsed: key order and whitespace do not count. Keyed, because the body holds
    personal data: a plain hash in the database would let guesses be checked."""
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return salted_hmac("keyward.api.idempotency", canonical.encode(), algorithm="sha256").digest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Send an Idempotency-Key of 1 to {MAX_KEY_LENGTH} printable characters.",
            field="Idempotency-Key",
        )
    return key


def run_once(
    *,
    tenant: Tenant,
    key: str,
    fingerprint: bytes,
    create: Callable[[], Outcome],
    planned: Outcome | None = None,
) -> tuple[int, dict[str, Any], bool]:
    """Run `create` once per (tenant, key) within the key's lifetime; replay it otherwise.

    Returns (status, body, replayed).

    1. Insert the key's row, doing nothing on conflict. A concurrent request
       holding the same key in an uncommitted transaction makes this wait
       until that transaction ends (PostgreSQL's unique index does the
       queueing), so two retries never both run `create`. A row this insert
       made is new and already locked by it: step 2 is skipped.
    2. Otherwise lock the row. A stored outcome under the same fingerprint is
       replayed; under another fingerprint it is a 409. An expired row starts over.
    3. Run `create` and store its outcome, in the same transaction: if it
       raises, the row goes with it and a later retry runs again.

    The stored outcome must hold no personal data (the caller stores the
    record's id, not its fields, and rebuilds the body on a replay).

    `planned`: the outcome `create` will return when it succeeds, if the
    caller knows it beforehand (a single create names its record first). A
    new row is then inserted with it, and step 3 writes nothing more: if
    `create` fails, the row goes with the transaction all the same, and
    nobody sees it before the commit (a concurrent retry waits on the index).
    """
    now = timezone.now()
    expires = now + timedelta(hours=settings.KEYWARD_API_IDEMPOTENCY_HOURS)
    with transaction.atomic():
        row = _insert_new(
            tenant_id=tenant.pk,
            key=key,
            fingerprint=fingerprint,
            now=now,
            expires=expires,
            planned=planned,
        )
        if row is not None and planned is not None:
            status, body = create()
            if (status, body) != planned:
                row.status, row.response = status, body
                row.save()
            return status, body, False
        if row is None:
            row = IdempotencyKey.objects.select_for_update().get(tenant=tenant, key=key)
        if row.expires_at <= now:
            row.request_sha256, row.status, row.response = fingerprint, None, None
            row.created, row.expires_at = now, expires
        elif not hmac.compare_digest(bytes(row.request_sha256), fingerprint):
            raise ApiError(
                409,
                "idempotency_key_reused",
                "This Idempotency-Key was already used with a different request.",
                field="Idempotency-Key",
            )
        elif row.status is not None:
            return row.status, dict(row.response or {}), True
        status, body = create()
        row.status, row.response = status, body
        row.save()
        return status, body, False


def _prep(name: str, value: Any) -> Any:
    field = IdempotencyKey._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field.get_db_prep_value(value, connection)


# The columns of a new key's row, in the order both inserts below give them.
_COLUMNS = "tenant_id, key, request_sha256, status, response, created, expires_at"


def _insert_new(
    *,
    tenant_id: Any,
    key: str,
    fingerprint: bytes,
    now: datetime,
    expires: datetime,
    planned: Outcome | None,
) -> IdempotencyKey | None:
    """The key's row if this call inserted it (one statement), else None: it existed."""
    table = IdempotencyKey._meta.db_table
    status, response = planned if planned is not None else (None, None)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "  # noqa: S608 (the model's own table and columns)
            "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING id",
            # Each value as its column's field makes it for this database: SQLite's
            # driver takes neither a UUID nor an aware datetime as they are.
            [
                _prep("tenant", tenant_id),
                key,
                _prep("request_sha256", fingerprint),
                status,
                None if response is None else json.dumps(response),
                _prep("created", now),
                _prep("expires_at", expires),
            ],
        )
        inserted = cursor.fetchone()
    if inserted is None:
        return None
    row = IdempotencyKey(
        pk=inserted[0],
        tenant_id=tenant_id,
        key=key,
        request_sha256=fingerprint,
        status=status,
        response=response,
        created=now,
        expires_at=expires,
    )
    row._state.adding = False
    row._state.db = connection.alias
    return row


class KeyClaimed(Exception):
    """The Idempotency-Key's row exists already: nothing was written, `run_once` decides."""


# PostgreSQL, for records.bulk's single-create statement, with `KeyClaim.params`.
# CLAIM_INSERT: the key's row for each row of the CTE `{source}` (one, or none
# to write nothing), nothing on a conflict, RETURNING 1 when it inserted. In
# INSERT ... SELECT a parameter takes its type from the SELECT, not from the
# column it goes into: each is cast to its column's type.
CLAIM_INSERT = (
    f"INSERT INTO api_idempotencykey ({_COLUMNS}) "  # noqa: S608 (constants only)
    "SELECT %(claim_tenant)s::uuid, %(claim_key)s::text, %(claim_sha256)s::bytea, "
    "%(claim_status)s::int4, %(claim_response)s::jsonb, %(claim_created)s::timestamptz, "
    "%(claim_expires)s::timestamptz FROM {source} "
    "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING 1"
)
# CLAIM_EXISTED: the key's row was there before the statement began (a retry),
# whatever the rest of the statement does.
CLAIM_EXISTED = (
    "EXISTS (SELECT 1 FROM api_idempotencykey "
    "WHERE tenant_id = %(claim_tenant)s::uuid AND key = %(claim_key)s::text)"
)


@dataclass(frozen=True)
class KeyClaim:
    """A new Idempotency-Key row holding the outcome its create will have, written
    by the same statement as the create: both are written or neither is.

    For the single create on PostgreSQL, one statement instead of a transaction
    around two (records.bulk.insert_one_record, with CLAIM_INSERT): the key's
    row is inserted only where the record is, and the record only where the
    key's row is new. A concurrent request holding the key waits on the unique
    index exactly as in `run_once`; a row found there makes the statement write
    nothing and the caller raise KeyClaimed, and `run_once` then replays,
    refuses or runs again.
    """

    tenant_id: Any
    key: str
    fingerprint: bytes
    outcome: Outcome
    created: datetime
    expires_at: datetime

    def params(self) -> dict[str, Any]:
        """The parameters of CLAIM_INSERT and CLAIM_EXISTED."""
        status, body = self.outcome
        return {
            "claim_tenant": self.tenant_id,
            "claim_key": self.key,
            "claim_sha256": self.fingerprint,
            "claim_status": status,
            "claim_response": json.dumps(body),
            "claim_created": self.created,
            "claim_expires": self.expires_at,
        }

    def insert(self) -> None:
        """Insert the row now, in the caller's transaction; KeyClaimed if it exists."""
        row = _insert_new(
            tenant_id=self.tenant_id,
            key=self.key,
            fingerprint=self.fingerprint,
            now=self.created,
            expires=self.expires_at,
            planned=self.outcome,
        )
        if row is None:
            raise KeyClaimed(self.key)


def key_claim(*, tenant: Tenant, key: str, fingerprint: bytes, outcome: Outcome) -> KeyClaim:
    """The claim of `key` (checked by `check_key`) for a create that will answer `outcome`."""
    now = timezone.now()
    return KeyClaim(
        tenant_id=tenant.pk,
        key=key,
        fingerprint=fingerprint,
        outcome=outcome,
        created=now,
        expires_at=now + timedelta(hours=settings.KEYWARD_API_IDEMPOTENCY_HOURS),
    )


def purge_expired() -> int:
    deleted, _ = IdempotencyKey.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
