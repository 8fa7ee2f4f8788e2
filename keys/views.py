from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.models import Outcome
from audit.services import Actor, record
from console.sudo import sudo_required
from keys.forms import CacheTtlForm, RotateDekForm
from keys.selectors import keys_overview, reencryption_job_for_tenant
from keys.services import KeyActionRefused, dek_rotate, reencryption_start, tenant_set_dek_cache_ttl
from tenants.permissions import Perm, TenantAccess, with_tenant


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
    }
    return render(request, "keys/keys.html", context, status=status)


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def keys_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _page(request, access)


def _refused(request: HttpRequest, access: TenantAccess, action: str, message: str) -> None:
    record(
        tenant=access.tenant,
        actor=Actor.for_user(request.user),
        action=action,
        outcome=Outcome.FAILURE,
        reason=message,
        request=request,
    )
    messages.error(request, message)


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
            actor=Actor.for_user(request.user),
            reason=reason or "rotated on demand",
            request=request,
        )
    except KeyActionRefused as exc:
        _refused(request, access, "dek.rotate", str(exc))
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
            actor=Actor.for_user(request.user),
            request=request,
        )
    except ValidationError as exc:
        form.add_error("ttl", " ".join(exc.messages))
        return _page(request, access, ttl_form=form, status=400)
    messages.success(request, "Key cache lifetime saved.")
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def start_reencryption(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    try:
        job = reencryption_start(
            tenant=access.tenant, actor=Actor.for_user(request.user), request=request
        )
    except KeyActionRefused as exc:
        _refused(request, access, "records.reencrypt", str(exc))
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
