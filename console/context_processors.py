from __future__ import annotations

from dataclasses import replace
from typing import Any

from django.http import HttpRequest

from console.banners import Banner, banner_for
from keys.expiry import expiring_version
from objects.selectors import migration_progress
from tenants.models import MIGRATING_STATES, Tenant
from tenants.permissions import is_support_staff
from tenants.selectors import memberships_for_user


def shell(request: HttpRequest) -> dict[str, Any]:
    """The tenant switcher and the state banner, for every page of the shell."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    access = getattr(request, "tenant_access", None)
    expiring = expiring_version(access.tenant) if access else None
    return {
        "expiring_key": expiring,
        "switcher": memberships_for_user(user),
        "is_support": is_support_staff(user),
        "access": access,
        "current_tenant": access.tenant if access else None,
        "banner": _with_progress(banner_for(access.tenant), access.tenant) if access else None,
    }


def _with_progress(banner: Banner | None, tenant: Tenant) -> Banner | None:
    """While the tenant's objects move, the banner says how far the move is."""
    if banner is None or tenant.state not in MIGRATING_STATES:
        return banner
    progress = migration_progress(tenant)
    if progress is None:
        return banner
    return replace(banner, text=f"{banner.text} Objects: {progress.label} ({progress.percent}%).")
