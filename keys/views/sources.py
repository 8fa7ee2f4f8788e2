"""Actions on any saved registration: test it again, enable it."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from keys.errors import KeyActionRefused
from keys.models import KeySource, SourceState
from keys.services.sources import byok_enable
from keys.views.common import (
    SOURCE_PAGES,
    addon_permits,
    refused,
    saved_then_tested,
)
from tenants.display import Act, state_permits
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.BRING_KEY, audit="key_source.test", back="keys:overview")
@addon_permits(audit="key_source.test")
def test_source(request: HttpRequest, access: TenantAccess, source_id: str) -> HttpResponse:
    """Test the saved settings again (the key store may have been fixed meanwhile)."""
    source = get_object_or_404(
        KeySource.objects.exclude(state__in=[SourceState.RETIRED, SourceState.REVOKED]),
        pk=source_id,
        tenant=access.tenant,
    )
    saved_then_tested(request, access, source)
    return redirect(SOURCE_PAGES.get(source.kind, "keys:overview"), slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.ENABLE, audit="byok.enable", back="keys:overview")
@addon_permits(audit="byok.enable")
def enable_source(request: HttpRequest, access: TenantAccess, source_id: str) -> HttpResponse:
    source = get_object_or_404(KeySource, pk=source_id, tenant=access.tenant)
    try:
        byok_enable(
            tenant=access.tenant, source=source, actor=access.actor(request.user), request=request
        )
    except KeyActionRefused as exc:
        refused(request, access, "byok.enable", str(exc))
        return redirect(SOURCE_PAGES.get(source.kind, "keys:overview"), slug=access.tenant.slug)
    messages.success(request, "Moving your data keys under your key. This page shows the progress.")
    return redirect("keys:overview", slug=access.tenant.slug)
