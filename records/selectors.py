from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet, Sum

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


def records_not_under(tenant: Tenant, dek: DataKey) -> QuerySet[SealedFields]:
    """Sealed fields of the tenant under any DEK but `dek`."""
    return SealedFields.objects.filter(dek__tenant=tenant).exclude(dek=dek)


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


def sealed_under(dek_id: int) -> bool:
    return SealedFields.objects.filter(dek_id=dek_id).exists()
