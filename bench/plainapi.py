"""The records API's write path without encryption: the ingest benchmark's baseline.

`records_create_plain` does the same database work as `records_create` (the
record, its sealed-fields row holding the encoded fields unencrypted, its
lookup rows under an unkeyed hash; one record in one statement, like it), so
that `bench/bench_ingest.py` measures what the envelope and the blind index
cost and nothing else. The endpoints
are the production views made with this store (`record_create_view`); they
are served only by `bench.plain_settings`, never by the product.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from functools import cache

from django.db import transaction
from django.urls import URLPattern, URLResolver, path

from api.auth import by_method
from api.idempotency import KeyClaim
from keys.models import DataKey, DekState
from records.api_views import record_create_batch_view, record_create_view, record_list
from records.blindindex import INDEXED_FIELDS
from records.bulk import insert_one_record, insert_records, is_postgres, one_statement
from records.fields import NewRecord
from records.indexkeys import LookupValues, lookup_rows_insert
from records.models import Record, SealedFields
from records.pii import encode_fields
from tenants.models import PAUSED_STATES, Tenant
from tenants.states import ServicePaused


def _index_plaintext(tenant: Tenant, rows: Sequence[Record], items: Sequence[NewRecord]) -> None:
    """The lookup rows the blind index would write, under an unkeyed hash."""
    lookup_rows_insert(
        [
            (tenant.pk, name, 0, hashlib.sha256(f"{name}\x00{value}".encode()).digest(), row.pk)
            for row, item in zip(rows, items, strict=True)
            for name, value in item.fields.items()
            if name in INDEXED_FIELDS
        ]
    )


def _plain_lookup(tenant: Tenant, item: NewRecord, record_id: int) -> list[LookupValues]:
    return [
        (tenant.pk, name, 0, hashlib.sha256(f"{name}\x00{value}".encode()).digest(), record_id)
        for name, value in item.fields.items()
        if name in INDEXED_FIELDS
    ]


@cache
def _dek_id(tenant_pk: uuid.UUID) -> int:
    """The DEK id the sealed-fields rows name, read once per tenant and process (the
    product has it from the envelope's state, without a query per request)."""
    return int(
        DataKey.objects.values_list("id", flat=True).get(tenant_id=tenant_pk, state=DekState.ACTIVE)
    )


def records_create_plain(
    *,
    tenant: Tenant,
    items: Sequence[NewRecord],
    savepoint: bool = True,
    claim: KeyClaim | None = None,
) -> list[Record]:
    if len(items) == 1 and is_postgres():
        with one_statement(savepoint=savepoint):
            return [_create_one_plain(tenant, items[0], claim)]
    with transaction.atomic(savepoint=savepoint):
        if claim is not None:
            claim.insert()
        return _create_many_plain(tenant, items)


def _create_one_plain(tenant: Tenant, item: NewRecord, claim: KeyClaim | None) -> Record:
    """One statement, like the product's single create (records.services._create_one)."""
    row = Record(
        uid=item.uid or uuid.uuid4(), tenant=tenant, kind=item.kind, external_id=item.external_id
    )
    row.sealed = SealedFields(record=row, dek_id=_dek_id(tenant.pk), pii=encode_fields(item.fields))
    if not insert_one_record(
        row,
        _plain_lookup(tenant, item, 0),  # the record id is the statement's own
        paused=PAUSED_STATES,
        key_versions=None,
        key_states=(),
        claim=claim,
    ):
        raise ServicePaused("paused")
    return row


def _create_many_plain(tenant: Tenant, items: Sequence[NewRecord]) -> list[Record]:
    state = Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk)
    if state in PAUSED_STATES:
        raise ServicePaused("paused")
    dek_id = DataKey.objects.values_list("id", flat=True).get(tenant=tenant, state=DekState.ACTIVE)
    rows = [
        Record(uid=uuid.uuid4(), tenant=tenant, kind=i.kind, external_id=i.external_id)
        for i in items
    ]
    for row, item in zip(rows, items, strict=True):
        row.sealed = SealedFields(record=row, dek_id=dek_id, pii=encode_fields(item.fields))
    created = insert_records(rows)
    _index_plaintext(tenant, created, items)
    return created


# Resolved before the product's own URLs (bench/plain_urls.py).
urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "api/v1/records",
        by_method(GET=record_list, POST=record_create_view(records_create_plain)),
    ),
    path("api/v1/records/batch", record_create_batch_view(records_create_plain)),
]
