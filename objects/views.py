"""The objects part of the tenant's Data page: usage per location and DEK, the move's progress."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.models import Outcome
from audit.services import Actor, record
from console.sudo import sudo_required
from keys.moves import objects_move_retry
from keys.services import KeyActionRefused
from objects.selectors import migration_progress, migrations_of_tenant, objects_usage
from tenants.models import Tenant
from tenants.permissions import Perm, TenantAccess, with_tenant


def data_section_context(tenant: Tenant) -> dict[str, Any]:
    """What `objects/_data_section.html` needs; the Data page merges it into its context."""
    return {
        "objects_usage": objects_usage(tenant),
        "object_migration": migration_progress(tenant),
        "object_migrations": migrations_of_tenant(tenant),
    }


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def migration_progress_partial(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """Polled every second by the progress region while a move runs."""
    return render(
        request,
        "objects/_data_section.html#object-migration-progress",
        {"tenant": access.tenant, "object_migration": migration_progress(access.tenant)},
    )


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def data_section(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """The whole objects section on its own (the Data page includes the same template)."""
    return render(
        request,
        "objects/_data_section.html",
        {"tenant": access.tenant, **data_section_context(access.tenant)},
    )


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def migration_retry(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """Start a failed move again, once its cause is fixed (the tenant stays paused till then)."""
    actor = Actor.for_user(request.user)
    try:
        message = objects_move_retry(tenant=access.tenant, actor=actor)
    except KeyActionRefused as exc:
        record(
            tenant=access.tenant,
            actor=actor,
            action="objects.migration_retry",
            outcome=Outcome.FAILURE,
            reason=str(exc),
            request=request,
        )
        messages.error(request, str(exc))
    else:
        messages.success(request, message)
    return redirect("data:overview", slug=access.tenant.slug)
