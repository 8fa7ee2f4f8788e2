"""Console views of the records app: re-encryption, started from the Keys page."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.models import Outcome
from audit.services import record
from keys.errors import KeyActionRefused
from records.reencryption import reencryption_start
from records.selectors import reencryption_job_for_tenant
from tenants.display import Act, state_permits
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.REENCRYPT, audit="records.reencrypt", back="keys:overview")
def start_reencryption(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = access.actor(request.user)
    try:
        job = reencryption_start(tenant=access.tenant, actor=actor, request=request)
    except KeyActionRefused as exc:
        record(
            tenant=access.tenant,
            actor=actor,
            action="records.reencrypt",
            outcome=Outcome.FAILURE,
            reason=str(exc),
            request=request,
        )
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"Re-encrypting {job.total} record(s) under data key v{job.target_dek.version}.",
        )
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def reencryption_progress(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return render(
        request,
        "keys/keys.html#progress",
        {"tenant": access.tenant, "job": reencryption_job_for_tenant(access.tenant)},
    )
