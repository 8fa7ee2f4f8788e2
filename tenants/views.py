from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tenants.forms import InviteForm, RoleForm
from tenants.models import Invitation, Membership, Role
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.selectors import (
    memberships_of_tenant,
    open_invitations_of_tenant,
    users_with_email,
)
from tenants.services import (
    InvitationRefused,
    invitation_accept,
    invitation_accept_new_account,
    invitation_create,
    invitation_open,
    invitation_record_refusal,
    invitation_revoke,
    membership_change_role,
    membership_remove,
    tenant_set_second_factor_requirement,
)
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
            "invitations": open_invitations_of_tenant(access.tenant),
            "invite_form": InviteForm(),
            "now": timezone.now(),
            "roles": Role.choices,
        },
    )


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
@sudo_required
def second_factor_setting(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    choice = request.POST.get("required")
    if choice not in ("on", "off"):
        messages.error(request, "Choose whether key actions need a second factor.")
        return redirect("tenants:members", slug=access.tenant.slug)
    tenant = tenant_set_second_factor_requirement(
        tenant=access.tenant,
        required=choice == "on",
        actor=access.actor(request.user),
        request=request,
    )
    messages.success(
        request,
        "Key actions now need a second factor."
        if tenant.require_second_factor
        else "Key actions now need the password only.",
    )
    return redirect("tenants:members", slug=access.tenant.slug)


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


def get_invitation_for_user(access: TenantAccess, invitation_id: str) -> Invitation:
    return get_object_or_404(Invitation, pk=invitation_id, tenant=access.tenant)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
@sudo_required
def invitation_send(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = InviteForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter an email address and choose one of the listed roles.")
        return redirect("tenants:members", slug=access.tenant.slug)
    try:
        invitation = invitation_create(
            tenant=access.tenant,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            actor=access.actor(request.user),
            invited_by=request.user,  # type: ignore[arg-type]
            site_url=request.build_absolute_uri("/"),
            request=request,
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(
            request,
            f"Invitation sent to {invitation.email}; "
            f"the link works until {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
        )
    return redirect("tenants:members", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_MEMBERS)
@sudo_required
def invitation_withdraw(
    request: HttpRequest, access: TenantAccess, invitation_id: str
) -> HttpResponse:
    invitation = get_invitation_for_user(access, invitation_id)
    try:
        invitation_revoke(invitation=invitation, actor=access.actor(request.user), request=request)
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    else:
        messages.success(request, f"The invitation to {invitation.email} no longer works.")
    return redirect("tenants:members", slug=access.tenant.slug)


def _refused(request: HttpRequest, slug: str, token: str, exc: InvitationRefused) -> HttpResponse:
    invitation_record_refusal(slug=slug, token=token, reason=exc.reason, request=request)
    return render(
        request,
        "tenants/invitation_refused.html",
        {"message": str(exc)},
        status=404 if exc.reason == "unknown" else 410,
    )


@require_http_methods(["GET", "POST"])
def invitation_join(request: HttpRequest, slug: str, token: str) -> HttpResponse:
    """The emailed link: choose a password (or, with an account already, join) once.

    No sign-in is asked: the token is the credential. A link that no longer
    works is refused with the way forward, and the refusal is audited.
    """
    try:
        invitation = invitation_open(slug=slug, token=token)
    except InvitationRefused as exc:
        return _refused(request, slug, token, exc)
    user_model = get_user_model()
    existing = users_with_email(invitation.email).first()
    context = {"invitation": invitation, "tenant": invitation.tenant}
    if existing is not None:
        if request.user.pk != existing.pk:
            return render(request, "tenants/invitation_sign_in.html", context)
        if request.method == "GET":
            return render(request, "tenants/invitation_join.html", context)
        try:
            invitation_accept(invitation=invitation, user=existing, request=request)
        except (InvitationRefused, ValidationError) as exc:
            if isinstance(exc, InvitationRefused):
                return _refused(request, slug, token, exc)
            messages.error(request, _error_text(exc))
            return redirect("console:home")
        messages.success(request, f"You are now a member of {invitation.tenant.name}.")
        return redirect("console:dashboard", slug=invitation.tenant.slug)
    # The unsaved account lets the validators compare the password with the email.
    form = SetPasswordForm(
        user_model(username=invitation.email, email=invitation.email),
        request.POST if request.method == "POST" else None,
    )
    if request.method == "GET" or not form.is_valid():
        return render(request, "tenants/invitation_join.html", {**context, "form": form})
    try:
        user = invitation_accept_new_account(
            invitation=invitation, password=form.cleaned_data["new_password1"], request=request
        )
    except InvitationRefused as exc:
        return _refused(request, slug, token, exc)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")  # type: ignore[arg-type]
    messages.success(request, f"Welcome to {invitation.tenant.name}.")
    return redirect("console:dashboard", slug=invitation.tenant.slug)
