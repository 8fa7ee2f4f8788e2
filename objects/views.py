"""The objects part of the tenant's Data page: usage per location and DEK, the move's progress."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

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
