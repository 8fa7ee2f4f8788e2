from __future__ import annotations

from django.db.models import Count, QuerySet

from archive.models import Record, SealedFields
from keys.models import DataKey
from tenants.models import Tenant


def records_not_under(tenant: Tenant, dek: DataKey) -> QuerySet[SealedFields]:
    """Sealed fields of the tenant under any DEK but `dek`."""
    return SealedFields.objects.filter(dek__tenant=tenant).exclude(dek=dek)


def record_counts_by_dek(tenant: Tenant) -> dict[int, int]:
    rows = (
        SealedFields.objects.filter(dek__tenant=tenant)
        .values("dek_id")
        .annotate(n=Count("record_id"))
    )
    return {row["dek_id"]: row["n"] for row in rows}


def record_for_tenant(tenant: Tenant, uid: str) -> Record | None:
    return Record.objects.filter(tenant=tenant, uid=uid).select_related("sealed").first()


def records_page(tenant: Tenant, *, kind: str | None, after: int, limit: int) -> list[Record]:
    """Up to `limit` records with an id past `after`, oldest first (keyset pagination)."""
    rows = Record.objects.filter(tenant=tenant, pk__gt=after).select_related("sealed")
    if kind:
        rows = rows.filter(kind=kind)
    return list(rows.order_by("pk")[:limit])
