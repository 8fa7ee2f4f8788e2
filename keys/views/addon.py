"""Asking the vendor for the BYOK add-on."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from keys.views.common import refused
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.services import AddonRefused, tenant_addon_request


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
def request_addon(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """Tell the vendor's support team this tenant wants to bring its own key."""
    try:
        tenant_addon_request(
            tenant=access.tenant, actor=access.actor(request.user), request=request
        )
    except AddonRefused as exc:
        refused(request, access, "addon.request", str(exc))
    else:
        messages.success(
            request,
            "Your request for the BYOK add-on went to the vendor's support team; they will "
            "turn it on and tell you.",
        )
    return redirect("keys:overview", slug=access.tenant.slug)
