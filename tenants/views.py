from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from tenants.forms import RoleForm
from tenants.models import Membership, Role
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.selectors import memberships_of_tenant
from tenants.services import membership_change_role, membership_remove
from tenants.sudo import sudo_required


def get_membership_for_user(access: TenantAccess, membership_id: str) -> Membership:
    return get_object_or_404(Membership, pk=membership_id, tenant=access.tenant)


@login_required
@require_GET
@with_tenant(Perm.MANAGE_MEMBERS)
def member_list(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return render(
        request,
        "tenants/members.html",
        {
            "tenant": access.tenant,
            "memberships": memberships_of_tenant(access.tenant),
            "roles": Role.choices,
        },
    )


def _error_text(exc: ValidationError) -> str:
    return " ".join(exc.messages)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
@sudo_required
def member_change_role(
    request: HttpRequest, access: TenantAccess, membership_id: str
) -> HttpResponse:
    membership = get_membership_for_user(access, membership_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the listed roles.")
        return redirect("tenants:members", slug=access.tenant.slug)
    try:
        membership_change_role(
            membership=membership,
            role=form.cleaned_data["role"],
            actor=access.actor(request.user),
            request=request,
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(
            request, f"{membership.user.get_username()} is now {form.cleaned_data['role']}."
        )
    return redirect("tenants:members", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
@sudo_required
def member_remove(request: HttpRequest, access: TenantAccess, membership_id: str) -> HttpResponse:
    membership = get_membership_for_user(access, membership_id)
    try:
        membership_remove(membership=membership, actor=access.actor(request.user), request=request)
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, f"{membership.user.get_username()} no longer has access.")
    return redirect("tenants:members", slug=access.tenant.slug)
