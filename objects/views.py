"""The objects part of the tenant's Data page: usage per location and DEK, the move's progress."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.models import Outcome
from audit.services import record
from keys.errors import KeyActionRefused
from objects.moves import objects_move_retry
from objects.selectors import migration_progress, migrations_of_tenant, objects_usage
from tenants.display import Act, state_permits
from tenants.models import MIGRATING_STATES
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


def data_section_context(access: TenantAccess) -> dict[str, Any]:
    """What `objects/_data_section.html` needs; the Data page merges it into its context."""
    tenant = access.tenant
    progress = migration_progress(tenant)
    return {
        "tenant": tenant,
        "objects_usage": objects_usage(tenant),
        "object_migration": progress,
        # While the tenant moves to or from its key, the data keys move before the objects:
        # the section follows from the start, before the object move exists.
        "keys_moving": progress is None and tenant.state in MIGRATING_STATES,
        "object_migrations": migrations_of_tenant(tenant),
        # A failed move's error and the retry button are for key managers only.
        "can_manage_keys": access.can(Perm.MANAGE_KEYS),
    }


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def data_section(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """The whole objects section on its own: the Data page includes the same template, and
    polls this every second while a move runs."""
    return render(request, "objects/_data_section.html", data_section_context(access))


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.RETRY_MOVE, audit="objects.migration_retry", back="data:overview")
def migration_retry(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """Start a failed move again, once its cause is fixed (the tenant stays paused till then)."""
    actor = access.actor(request.user)
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
