from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from django.db import connection
from django.db.models import Max, Min, Q, QuerySet, Sum

from keys.models import DataKey, DekState
from records.models import (
    OPEN_JOB_STATES,
    DekRecordCount,
    IndexKey,
    Record,
    ReencryptionJob,
    SealedFields,
)
from tenants.models import Tenant


def record_counts_by_dek(tenant: Tenant) -> dict[int, int]:
    """{DEK id: records it seals}, exact, from the counters the database keeps
    (DekRecordCount): a few rows per DEK, however many records there are."""
    rows = (
        DekRecordCount.objects.filter(dek__tenant=tenant)
        .values("dek_id")
        .annotate(n=Sum("records"))
        .order_by()
    )
    return {row["dek_id"]: row["n"] for row in rows if row["n"]}


def record_for_tenant(tenant: Tenant, uid: str) -> Record | None:
    return Record.objects.filter(tenant=tenant, uid=uid).select_related("sealed").first()


def records_page(tenant: Tenant, *, kind: str | None, after: int, limit: int) -> list[Record]:
    """Up to `limit` records with an id past `after`, oldest first (keyset pagination)."""
    rows = Record.objects.filter(tenant=tenant, pk__gt=after).select_related("sealed")
    if kind:
        rows = rows.filter(kind=kind)
    return list(rows.order_by("pk")[:limit])


@dataclass(frozen=True)
class DekRecords:
    dek: DataKey
    records: int


@dataclass(frozen=True)
class RecordsOverview:
    per_dek: list[DekRecords]
    total: int
    index_keys: list[IndexKey]


def records_overview(tenant: Tenant) -> RecordsOverview:
    """Records per DEK (from the maintained counters) and the blind-index key versions.

    Every DEK that seals records or may still seal them (active, decrypt-only)
    is listed; retired and destroyed DEKs hold nothing and are left out, so a
    tenant with years of rotations does not get a thousand empty rows.
    """
    counts = record_counts_by_dek(tenant)
    deks = DataKey.objects.filter(tenant=tenant).filter(
        Q(state__in=[DekState.ACTIVE, DekState.RETIRING]) | Q(pk__in=list(counts))
    )
    per_dek = [
        DekRecords(dek, counts.get(dek.pk, 0)) for dek in deks.select_related("kek_version__source")
    ]
    return RecordsOverview(
        per_dek=per_dek,
        total=sum(counts.values()),
        index_keys=list(IndexKey.objects.filter(tenant=tenant).exclude(state="retired")),
    )


def reencryption_job_for_tenant(tenant: Tenant) -> ReencryptionJob | None:
    return ReencryptionJob.objects.filter(tenant=tenant).select_related("target_dek").first()


def open_reencryption_jobs(tenant: Tenant) -> QuerySet[ReencryptionJob]:
    return ReencryptionJob.objects.filter(tenant=tenant, state__in=OPEN_JOB_STATES)


def reencryption_jobs(tenant: Tenant) -> list[ReencryptionJob]:
    """The open job, if any, and the latest: newest first."""
    return list(ReencryptionJob.objects.filter(tenant=tenant).select_related("target_dek")[:2])


def record_id_span(tenant_id: UUID) -> tuple[int, int] | None:
    """(first, last) id of the tenant's records, None without any: two probes of
    Record's (tenant, id) index."""
    span = Record.objects.filter(tenant_id=tenant_id).aggregate(first=Min("id"), last=Max("id"))
    first, last = span["first"], span["last"]
    return None if first is None or last is None else (first, last)


# Whether any of a tenant's records is sealed under a DEK. Sealed fields have
# no index on their DEK (see SealedFields), so this reads rows, one of two ways
# on PostgreSQL, both exact for the tenant's records:
# - every sealed row whose id lies in the tenant's span of record ids, when
#   the tenant holds most of that span (about 0.25 µs a row, in id order);
# - the tenant's records through their (tenant, id) index, each record's
#   sealed fields by primary key (about 1.4 µs a record), when the span is
#   mostly other tenants' rows. OFFSET 0 keeps the planner from a join planned
#   from estimates, which would read every tenant's sealed fields.
_SEALED_IN_SPAN_PG = (
    "SELECT EXISTS (SELECT 1 FROM archive_sealedfields "
    "WHERE record_id BETWEEN %s AND %s AND dek_id = %s)"
)
_SEALED_UNDER_PG = (
    "SELECT EXISTS (SELECT 1 FROM archive_record AS r CROSS JOIN LATERAL "
    "(SELECT dek_id FROM archive_sealedfields WHERE record_id = r.id OFFSET 0) AS s "
    "WHERE r.tenant_id = %s AND s.dek_id = %s)"
)
# The span is read row by row when it holds at most this many ids per record
# of the tenant: about where the two ways cost the same.
_DENSE_SPAN = 4


def sealed_under(dek: DataKey) -> bool:
    """Whether any record is sealed under `dek`, for retiring it (its wrapped copy
    is then destroyed): the counters say so at once when it seals any, and
    when they count none, the tenant's records are read to make sure."""
    # A DEK's count is the sum of its slots; one slot alone can be below zero.
    # The tenant's total only picks the cheaper read below, never the answer.
    counts = DekRecordCount.objects.filter(dek__tenant_id=dek.tenant_id).aggregate(
        this_dek=Sum("records", filter=Q(dek=dek)), tenant=Sum("records")
    )
    if counts["this_dek"]:
        return True
    if connection.vendor != "postgresql":
        return SealedFields.objects.filter(record__tenant_id=dek.tenant_id, dek=dek).exists()
    span = record_id_span(dek.tenant_id)
    if span is None:
        return False  # the tenant has no records: none is sealed under its DEK
    first, last = span
    with connection.cursor() as cursor:
        if last - first + 1 <= _DENSE_SPAN * max(counts["tenant"] or 0, 1):
            cursor.execute(_SEALED_IN_SPAN_PG, [first, last, dek.pk])
        else:
            cursor.execute(_SEALED_UNDER_PG, [dek.tenant_id, dek.pk])
        row = cursor.fetchone()
    return bool(row and row[0])
