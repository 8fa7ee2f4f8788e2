from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from console.banners import banner_for
from keys.expiry import expiring_version
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
        "banner": banner_for(access.tenant) if access else None,
    }
