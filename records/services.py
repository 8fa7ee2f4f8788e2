"""Writing and reading protected records through the envelope."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest

from api.idempotency import KeyClaim
from audit.services import Actor
from audit.services import record as audit
from crypto.ciphertext import dek_id_of
from crypto.envelope import DataKeyExhausted
from keys.runtime import envelope, state_from_db
from keys.services.deks import dek_rotate
from records.blindindex import INDEXED_FIELDS
from records.bulk import insert_one_record, insert_records, is_postgres, one_statement
from records.fields import FIELDS_BY_KIND, PII_FIELD, NewRecord
from records.indexkeys import WRITING_STATES, index_new_records, lookup_rows_to_check
from records.models import Record, SealedFields
from records.pii import decode_fields, encode_fields
from tenants.models import PAUSED_STATES, ServiceState, Tenant
from tenants.states import ServicePaused


def _validate(item: NewRecord) -> None:
    allowed = FIELDS_BY_KIND.get(item.kind)
    if allowed is None:
        raise ValidationError({"kind": f"Unknown kind {item.kind!r}; use device or user."})
    unknown = sorted(set(item.fields) - set(allowed))
    if unknown:
        raise ValidationError({"fields": f"Unknown field(s) for {item.kind}: {', '.join(unknown)}"})
    if not item.external_id or len(item.external_id) > 255:
        raise ValidationError({"external_id": "Give an external id of 1 to 255 characters."})


def _encrypt_rows(tenant: Tenant, items: Sequence[NewRecord]) -> list[Record]:
    tenant_id = str(tenant.pk)
    rows = [
        Record(uid=i.uid or uuid.uuid4(), tenant=tenant, kind=i.kind, external_id=i.external_id)
        for i in items
    ]
    plain = [
        (row.kind, PII_FIELD, str(row.uid), encode_fields(item.fields))
        for row, item in zip(rows, items, strict=True)
    ]
    env = envelope()
    try:
        sealed = env.encrypt_many(tenant_id, plain)
    except DataKeyExhausted:
        dek_rotate(
            tenant=tenant, actor=Actor.system("encryption limit"), reason="encryption limit reached"
        )
        # Other processes learn of the new DEK once the rotation commits (with the
        # caller's transaction, if there is one); this one uses it right away.
        env.prime(tenant_id, state_from_db(tenant_id))
        sealed = env.encrypt_many(tenant_id, plain)
    for row, blob in zip(rows, sealed, strict=True):
        row.sealed = SealedFields(record=row, dek_id=dek_id_of(blob), pii=blob)
    return rows


def _check_not_paused(tenant: Tenant) -> None:
    state = Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk)
    if state in PAUSED_STATES:
        raise ServicePaused(
            f"The tenant's service is paused ({ServiceState(state).label}); retry later."
        )


def records_create(
    *,
    tenant: Tenant,
    items: Sequence[NewRecord],
    batch_size: int = 2000,
    savepoint: bool = True,
    claim: KeyClaim | None = None,
) -> list[Record]:
    """Encrypt and insert records in batches (COPY or one INSERT per batch, never per row).

    All or nothing: one record on PostgreSQL is one statement (`_create_one`),
    more are one transaction. `savepoint=False` for a caller already in a
    transaction that it ends on any error from here (the API's Idempotency-Key
    transaction): no savepoint round trips, and an error spoils that whole
    transaction. `claim`: an Idempotency-Key row written with the records, or
    KeyClaimed and nothing written if it exists.
    """
    if len(items) == 1 and is_postgres():
        with one_statement(savepoint=savepoint):
            return [_create_one(tenant, items[0], claim)]
    with transaction.atomic(savepoint=savepoint):
        _check_not_paused(tenant)
        for item in items:
            _validate(item)
        if claim is not None:
            claim.insert()
        created: list[Record] = []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            rows = insert_records(_encrypt_rows(tenant, batch))
            # In the same transaction, from the plaintext at hand: every path that
            # creates records, bulk loads included, is indexed.
            index_new_records(tenant, rows, batch)
            created += rows
        return created


def _create_one(tenant: Tenant, item: NewRecord, claim: KeyClaim | None) -> Record:
    """One record in one statement that checks that the tenant is not paused and that
    its index keys are those the lookup rows were made with, and writes the record,
    its sealed fields, its lookup rows and the claim's row if any
    (records.bulk.insert_one_record). It needs no transaction of its own: outside
    one, it commits on its own. What may write before it (the DEK's encryption
    count reserved, a rotation at the count's limit, the tenant's first index
    key) is nothing a failed create must take back.

    The same checks in the same order as for many records: paused first, then
    the record's own (validation runs first here, and the state is read when
    it fails, so that a paused tenant still hears that it is paused).
    """
    try:
        _validate(item)
    except ValidationError:
        _check_not_paused(tenant)
        raise
    (row,) = _encrypt_rows(tenant, [item])
    indexed = bool(set(item.fields) & INDEXED_FIELDS)
    for attempt in range(3):
        versions, lookup = (
            lookup_rows_to_check(tenant, item.fields, fresh=attempt > 0) if indexed else (None, [])
        )
        written = insert_one_record(
            row,
            lookup,
            paused=PAUSED_STATES,
            key_versions=versions,
            key_states=WRITING_STATES,
            claim=claim,
        )
        if written:
            return row
        _check_not_paused(tenant)  # else the index keys changed meanwhile: again, fresh
    raise RuntimeError("the tenant's index keys keep changing; retry later")


@transaction.atomic
def record_delete(
    *, tenant: Tenant, record: Record, actor: Actor, request: HttpRequest | None = None
) -> None:
    """Delete a record, its sealed fields and its lookup rows (refused while paused)."""
    state = Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk)
    if state in PAUSED_STATES:
        raise ServicePaused(
            f"The tenant's service is paused ({ServiceState(state).label}); retry later."
        )
    if record.tenant_id != tenant.pk:
        raise ValidationError("record belongs to another tenant")
    target = f"{record.kind} {record.uid}"
    record.delete()
    audit(tenant=tenant, actor=actor, action="record.delete", target=target, request=request)


def record_fields(tenant: Tenant, record: Record) -> dict[str, str]:
    """Decrypt a record's personal fields (raises if the key is revoked or the data moved)."""
    if record.tenant_id != tenant.pk:
        raise ValidationError("record belongs to another tenant")
    sealed = record.sealed
    plain = envelope().decrypt(
        str(tenant.pk), record.kind, PII_FIELD, str(record.uid), bytes(sealed.pii)
    )
    return decode_fields(plain)
