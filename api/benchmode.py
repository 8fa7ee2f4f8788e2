"""Benchmarks only: the records API's write path with encryption switched off.

Reached only when KEYWARD_API_BENCH_PLAINTEXT is on, which production
settings refuse. It does the same database work as `records_create` (the
record, its sealed-fields row holding the encoded fields unencrypted, its
lookup rows under an unkeyed hash), so that `bench/bench_ingest.py` measures
what the envelope and the blind index cost and nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction

from archive.bulk import insert_records
from archive.models import Record, SealedFields
from archive.pii import encode_fields
from archive.services import NewRecord, ServicePaused
from keys.models import DataKey, DekState
from tenants.models import PAUSED_STATES, Tenant


@transaction.atomic
def records_create_plain(*, tenant: Tenant, items: Sequence[NewRecord]) -> list[Record]:
    from api.indexkeys import index_new_records

    assert settings.KEYWARD_API_BENCH_PLAINTEXT, "benchmarks only"
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
    index_new_records(tenant, created, items)
    return created
