from __future__ import annotations

from django.db.models import Count, QuerySet

from archive.models import Record
from keys.models import DataKey
from tenants.models import Tenant


def records_not_under(tenant: Tenant, dek: DataKey) -> QuerySet[Record]:
    return Record.objects.filter(tenant=tenant).exclude(dek=dek)


def record_counts_by_dek(tenant: Tenant) -> dict[int, int]:
    rows = Record.objects.filter(tenant=tenant).values("dek_id").annotate(n=Count("id"))
    return {row["dek_id"]: row["n"] for row in rows}


def record_for_tenant(tenant: Tenant, uid: str) -> Record | None:
    return Record.objects.filter(tenant=tenant, uid=uid).first()
