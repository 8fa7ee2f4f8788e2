"""The Keys page: the overview, rotating the data key, the key cache lifetime, move progress."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from keys.errors import KeyActionRefused
from keys.forms import (
    CacheTtlForm,
    RotateDekForm,
)
from keys.providers.base import KeyProviderError
from keys.registry import provider_for
from keys.selectors.overview import enabling_progress, keys_overview
from keys.services.deks import dek_rotate, tenant_set_dek_cache_ttl
from keys.views.common import (
    refused,
)
from tenants.models import ServiceState
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.states import REVOCABLE_STATES
from tenants.sudo import sudo_required


def _page(
    request: HttpRequest,
    access: TenantAccess,
    ttl_form: CacheTtlForm | None = None,
    status: int = 200,
) -> HttpResponse:
    overview = keys_overview(access.tenant)
    context = {
        "tenant": access.tenant,
        "overview": overview,
        "ttl_form": ttl_form or CacheTtlForm(initial={"ttl": access.tenant.dek_cache_ttl}),
        "rotate_form": RotateDekForm(),
        "job": overview.open_job or overview.last_job,
        "can_manage": access.can(Perm.MANAGE_KEYS),
        "can_revoke": access.tenant.state in REVOCABLE_STATES,
        "can_rotate_kek": bool(
            overview.source
            and access.tenant.state == ServiceState.BYOK_ACTIVE
            and provider_for(overview.source).can_rotate_now
        ),
        "can_destroy": access.can(Perm.DESTROY_KEYS),
        "can_remove": access.can(Perm.REMOVE_BYOK)
        and access.tenant.state in (ServiceState.BYOK_ACTIVE, ServiceState.DEGRADED),
        "enabling": enabling_progress(access.tenant),
    }
    return render(request, "keys/keys.html", context, status=status)


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def keys_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _page(request, access)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def rotate_dek(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = RotateDekForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        dek = dek_rotate(
            tenant=access.tenant,
            actor=access.actor(request.user),
            reason=reason or "rotated on demand",
            request=request,
        )
    except (KeyActionRefused, KeyProviderError) as exc:
        refused(request, access, "dek.rotate", str(exc))
    else:
        messages.success(request, f"New data key v{dek.version} is in use for new data.")
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def set_cache_ttl(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = CacheTtlForm(request.POST)
    if not form.is_valid():
        return _page(request, access, ttl_form=form, status=400)
    try:
        tenant_set_dek_cache_ttl(
            tenant=access.tenant,
            ttl=form.cleaned_data["ttl"],
            actor=access.actor(request.user),
            request=request,
        )
    except ValidationError as exc:
        form.add_error("ttl", " ".join(exc.messages))
        return _page(request, access, ttl_form=form, status=400)
    messages.success(request, "Key cache lifetime saved.")
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def enable_progress(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return render(
        request,
        "keys/keys.html#enable-progress",
        {"tenant": access.tenant, "enabling": enabling_progress(access.tenant)},
    )
