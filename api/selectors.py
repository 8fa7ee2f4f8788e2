from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from api.models import ApiToken, IndexKey
from archive.selectors import record_counts_by_dek
from keys.models import DataKey
from tenants.models import Tenant


@dataclass(frozen=True)
class DekRecords:
    dek: DataKey
    records: int


@dataclass(frozen=True)
class RecordsOverview:
    per_dek: list[DekRecords]
    total: int
    index_keys: list[IndexKey]


def api_tokens_for_tenant(tenant: Tenant) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(tenant=tenant).select_related("created_by")


def api_token_for_tenant(tenant: Tenant, token_id: str) -> ApiToken | None:
    return ApiToken.objects.filter(tenant=tenant, pk=token_id).first()


def records_overview(tenant: Tenant) -> RecordsOverview:
    """Records per DEK (an index-only count) and the blind-index key versions."""
    counts = record_counts_by_dek(tenant)
    per_dek = [
        DekRecords(dek, counts.get(dek.pk, 0))
        for dek in DataKey.objects.filter(tenant=tenant).select_related("kek_version__source")
    ]
    return RecordsOverview(
        per_dek=per_dek,
        total=sum(counts.values()),
        index_keys=list(IndexKey.objects.filter(tenant=tenant).exclude(state="retired")),
    )
