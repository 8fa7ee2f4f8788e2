"""The rotation review page (its confirm and reject are lifecycle actions)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from keys.models import KekState, KeySource, SourceKind, SourceState
from keys.selectors.overview import rotation_cause, rotation_history
from keys.selectors.sources import pending_version
from tenants.permissions import Perm, TenantAccess, with_tenant


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
def rotation_review(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    tenant = access.tenant
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    context = {
        "tenant": tenant,
        "source": source,
        "pending": pending_version(source) if source else None,
        "current_versions": list(
            source.versions.filter(state=KekState.ACTIVE).order_by("-created") if source else []
        ),
        "history": rotation_history(tenant),
        "cause": rotation_cause(tenant),
    }
    return render(request, "keys/rotation.html", context)
