"""The tenant's Access page: answer vendor support's requests, end grants, set the rules."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from tenants.access import (
    AccessRefused,
    access_grant_end,
    access_refusal_record,
    access_request_approve,
    access_request_deny,
    approvers,
    tenant_set_support_access,
)
from tenants.forms import AccessAnswerForm, SupportAccessForm
from tenants.models import AccessRequest, Membership
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.selectors import access_requests_of_tenant, memberships_of_tenant
from tenants.sudo import sudo_required


def get_access_request_for_user(access: TenantAccess, request_id: str) -> AccessRequest:
    return get_object_or_404(
        AccessRequest.objects.select_related("tenant", "requester"),
        pk=request_id,
        tenant=access.tenant,
    )


def _may_answer(access: TenantAccess, request: HttpRequest) -> bool:
    return any(m.user_id == request.user.pk for m in approvers(access.tenant))


def _members(access: TenantAccess) -> list[tuple[str, str]]:
    return [
        (str(m.pk), f"{m.user.get_username()} ({m.get_role_display()})")
        for m in memberships_of_tenant(access.tenant)
        if m.role != "owner"
    ]


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def access_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    answering = _may_answer(access, request)
    if access.is_support or not (answering or access.can(Perm.VIEW_AUDIT)):
        raise PermissionDenied
    tenant = access.tenant
    named = [
        str(pk)
        for pk in Membership.objects.filter(
            tenant=tenant, approves_support_access=True
        ).values_list("pk", flat=True)
    ]
    settings_form = SupportAccessForm(
        initial={
            "policy": tenant.support_access,
            "approvals": tenant.support_approvals,
            "max_hours": tenant.support_max_hours,
            "approvers": named,
        },
        members=_members(access),
    )
    return render(
        request,
        "tenants/access.html",
        {
            "tenant": tenant,
            "requests": access_requests_of_tenant(tenant),
            "now": timezone.now(),
            "may_answer": answering,
            "may_configure": access.can(Perm.MANAGE_MEMBERS),
            "answer_form": AccessAnswerForm(),
            "settings_form": settings_form,
            "approvers": approvers(tenant),
        },
    )


def approvers_only(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """403 (recorded) for a member who may not answer, before any password is asked."""

    @wraps(view)
    def wrapper(request: HttpRequest, access: TenantAccess, request_id: str) -> HttpResponseBase:
        if not _may_answer(access, request):
            access_refusal_record(
                tenant=access.tenant,
                actor=access.actor(request.user),
                action="access.answer",
                target=str(request_id),
                reason="not an approver of this tenant",
                request=request,
            )
            raise PermissionDenied
        return view(request, access, request_id)

    return wrapper


def _answer(
    request: HttpRequest, access: TenantAccess, request_id: str, *, approve: bool
) -> HttpResponse:
    asked = get_access_request_for_user(access, request_id)
    action = "access.approve" if approve else "access.deny"
    form = AccessAnswerForm(request.POST)
    comment = form.cleaned_data["comment"] if form.is_valid() else ""
    service = access_request_approve if approve else access_request_deny
    try:
        answered = service(
            access_request=asked, approver=request.user, comment=comment, request=request
        )
    except AccessRefused as exc:
        access_refusal_record(
            tenant=access.tenant,
            actor=access.actor(request.user),
            action=action,
            target=str(asked.pk),
            reason=str(exc),
            request=request,
        )
        messages.error(request, str(exc))
    else:
        if not approve:
            messages.success(request, f"You denied {answered.requester_display}'s request.")
        elif answered.ends_at is not None:
            messages.success(
                request,
                f"Access granted to {answered.requester_display} until "
                f"{answered.ends_at:%Y-%m-%d %H:%M} UTC.",
            )
        else:
            messages.success(request, "Your approval is recorded: one more approver must approve.")
    return redirect("access:page", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.VIEW_STATUS)
@approvers_only
@sudo_required
def access_approve(request: HttpRequest, access: TenantAccess, request_id: str) -> HttpResponse:
    return _answer(request, access, request_id, approve=True)


@login_required
@require_POST
@with_tenant(Perm.VIEW_STATUS)
@approvers_only
def access_deny(request: HttpRequest, access: TenantAccess, request_id: str) -> HttpResponse:
    # Saying no needs no password again: it only ever takes access away.
    return _answer(request, access, request_id, approve=False)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
def access_end(request: HttpRequest, access: TenantAccess, request_id: str) -> HttpResponse:
    asked = get_access_request_for_user(access, request_id)
    try:
        access_grant_end(access_request=asked, owner=request.user, request=request)
    except AccessRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{asked.requester_display}'s access ended now.")
    return redirect("access:page", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
@sudo_required
def access_settings(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = SupportAccessForm(request.POST, members=_members(access))
    if not form.is_valid():
        errors = "; ".join(
            f"{form.fields[f].label}: {' '.join(str(m) for m in e)}" for f, e in form.errors.items()
        )
        messages.error(request, f"Nothing changed. {errors}")
        return redirect("access:page", slug=access.tenant.slug)
    try:
        tenant_set_support_access(
            tenant=access.tenant,
            actor=access.actor(request.user),
            policy=form.cleaned_data["policy"],
            approvals=form.cleaned_data["approvals"],
            max_hours=form.cleaned_data["max_hours"],
            approver_ids=list(form.cleaned_data["approvers"]),
            request=request,
        )
    except AccessRefused as exc:
        messages.error(request, f"Nothing changed. {exc}")
    else:
        messages.success(request, "Vendor support access settings saved.")
    return redirect("access:page", slug=access.tenant.slug)
