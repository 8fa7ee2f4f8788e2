from __future__ import annotations

from django.db.models import QuerySet

from api.models import ApiToken
from tenants.models import Tenant


def api_tokens_for_tenant(tenant: Tenant) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(tenant=tenant).select_related("created_by")


def api_token_for_tenant(tenant: Tenant, token_id: str) -> ApiToken | None:
    return ApiToken.objects.filter(tenant=tenant, pk=token_id).first()
