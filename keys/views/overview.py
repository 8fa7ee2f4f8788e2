"""The Keys page: the overview, rotating the data key, the key cache lifetime, move progress."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from keys.errors import KeyActionRefused
from keys.forms import (
    CacheTtlForm,
    RotateDekForm,
)
from keys.models import SourceKind
from keys.providers.base import KeyProviderError
from keys.registry import provider_for
from keys.selectors.overview import (
    enabling_progress,
    keys_overview,
    last_key_move,
    revocation_bound,
)
from keys.selectors.usage import rotation_chart, volume_charts
from keys.services.deks import dek_rotate, tenant_set_dek_cache_ttl
from keys.views.common import (
    refused,
)
from tenants.display import Act, state_allows, state_permits
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required

# The permission each state-dependent action needs beyond the state (else MANAGE_KEYS).
_PERM_OF = {Act.DESTROY: Perm.DESTROY_KEYS, Act.REMOVE_BYOK: Perm.REMOVE_BYOK}


def _page(
    request: HttpRequest,
    access: TenantAccess,
    ttl_form: CacheTtlForm | None = None,
    status: int = 200,
) -> HttpResponse:
    tenant = access.tenant
    overview = keys_overview(tenant)
    now = timezone.now()
    manage = access.can(Perm.MANAGE_KEYS)
    source = overview.source
    context = {
        "tenant": tenant,
        "overview": overview,
        "ttl_form": ttl_form or CacheTtlForm(initial={"ttl": tenant.dek_cache_ttl}),
        "rotate_form": RotateDekForm(),
        "job": overview.open_job or overview.last_job,
        "can_manage": manage,
        # What the person may do now: their role, and the tenant-state table.
        "can": {
            str(act): access.can(_PERM_OF.get(act, Perm.MANAGE_KEYS)) and state_allows(tenant, act)
            for act in Act
        },
        "can_rotate_kek": bool(
            manage
            and source
            and state_allows(tenant, Act.ROTATE_KEK)
            and provider_for(source).can_rotate_now
        ),
        "uploads_are_source": bool(source and source.kind == SourceKind.UPLOADED),
        "enabling": enabling_progress(tenant),
        "last_move": last_key_move(tenant),
        "bound": revocation_bound(tenant),
        "volume_charts": volume_charts(tenant, now.date()),
        "rotation_chart": rotation_chart(tenant, now),
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
@state_permits(Act.ROTATE_DEK, audit="dek.rotate", back="keys:overview")
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
@state_permits(Act.SET_CACHE_TTL, audit="tenant.set_dek_cache_ttl", back="keys:overview")
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
        {
            "tenant": access.tenant,
            "enabling": enabling_progress(access.tenant),
            "last_move": last_key_move(access.tenant),
        },
    )
