from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from tenants.models import (
    DEK_ROTATION_DAYS_MAX,
    DEK_ROTATION_DAYS_MIN,
    Invitation,
    Membership,
    Role,
    ServiceState,
    Tenant,
)
from tenants.selectors import users_with_email

logger = logging.getLogger(__name__)

# What a new tenant needs besides its row (keys make its key source and first
# data key): registered at startup by the apps above, run in the create's
# transaction, so a tenant never exists without them.
TenantCreatedHook = Callable[[Tenant, Actor], object]
_created_hooks: list[TenantCreatedHook] = []


def tenant_created_register(hook: TenantCreatedHook) -> None:
    if hook not in _created_hooks:
        _created_hooks.append(hook)


@transaction.atomic
def tenant_create(
    *,
    name: str,
    slug: str,
    actor: Actor,
    request: HttpRequest | None = None,
    byok_addon: bool | None = None,
) -> Tenant:
    """A new tenant on the vendor-managed key. `byok_addon` None: the operator's default
    (KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS)."""
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"A tenant with the slug {slug!r} exists already."})
    if byok_addon is None:
        byok_addon = settings.KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS
    tenant = Tenant(name=name, slug=slug, byok_addon=byok_addon)
    tenant.full_clean()
    tenant.save()
    record(
        tenant=tenant,
        actor=actor,
        action="tenant.create",
        target=slug,
        details={"byok_addon": byok_addon},
        request=request,
    )
    for hook in _created_hooks:
        hook(tenant, actor)
    return tenant


@transaction.atomic
def tenant_set_second_factor_requirement(
    *, tenant: Tenant, required: bool, actor: Actor, request: HttpRequest | None = None
) -> Tenant:
    """Whether sudo mode for key actions asks for the second factor too."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.require_second_factor == required:
        return locked
    locked.require_second_factor = required
    locked.save(update_fields=["require_second_factor"])
    record(
        tenant=locked,
        actor=actor,
        action="tenant.second_factor_required" if required else "tenant.second_factor_optional",
        target=locked.slug,
        request=request,
    )
    return locked


@transaction.atomic
def tenant_rename(
    *, tenant: Tenant, name: str, actor: Actor, request: HttpRequest | None = None
) -> Tenant:
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    old = locked.name
    if name == old:
        return locked
    locked.name = name
    locked.full_clean(exclude=["slug"])
    locked.save(update_fields=["name"])
    record(
        tenant=locked,
        actor=actor,
        action="tenant.rename",
        target=locked.slug,
        details={"from": old, "to": name},
        request=request,
    )
    return locked


@transaction.atomic
def tenant_set_dek_rotation_days(
    *, tenant: Tenant, days: int, actor: Actor, request: HttpRequest | None = None
) -> Tenant:
    """How old the active data key may grow before the schedule rotates it.

    No epoch to publish: the period only changes when the next rotation is due,
    never which keys may be used.
    """
    if not DEK_ROTATION_DAYS_MIN <= days <= DEK_ROTATION_DAYS_MAX:
        raise ValidationError(
            {"days": f"Choose between {DEK_ROTATION_DAYS_MIN} and {DEK_ROTATION_DAYS_MAX} days."}
        )
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    old = locked.dek_rotation_days
    if days == old:
        return locked
    locked.dek_rotation_days = days
    locked.save(update_fields=["dek_rotation_days"])
    record(
        tenant=locked,
        actor=actor,
        action="tenant.set_dek_rotation_days",
        details={"from": old, "to": days},
        request=request,
    )
    return locked


class AddonRefused(Exception):
    """A change of the BYOK add-on that cannot be made; the message is the user's."""


@transaction.atomic
def tenant_addon_enable(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> Tenant:
    """Let the tenant bring its own key (support turns the licensed module on)."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.byok_addon:
        raise AddonRefused(f"{locked.name} has the BYOK add-on already.")
    locked.byok_addon = True
    locked.save(update_fields=["byok_addon"])
    record(tenant=locked, actor=actor, action="addon.enable", target="byok", request=request)
    return locked


@transaction.atomic
def tenant_addon_disable(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> Tenant:
    """Take the add-on away, only while the tenant is on the vendor-managed key.

    Any other state means the tenant's own key protects (or last protected) its
    data: taking the module away then would strand that key, so the customer
    removes BYOK first (or the tenant was destroyed, and nothing is left to change).
    """
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if not locked.byok_addon:
        raise AddonRefused(f"{locked.name} does not have the BYOK add-on.")
    if locked.state != ServiceState.VENDOR_MANAGED:
        raise AddonRefused(
            f"{locked.name}'s own key is in use ({locked.get_state_display()}): remove BYOK "
            "first. The tenant's owner removes it on the Keys page."
        )
    locked.byok_addon = False
    locked.save(update_fields=["byok_addon"])
    record(tenant=locked, actor=actor, action="addon.disable", target="byok", request=request)
    return locked


@transaction.atomic
def tenant_addon_request(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> None:
    """A customer asks the vendor for the add-on: support is emailed (after commit)."""
    tenant = Tenant.objects.get(pk=tenant.pk)
    if tenant.byok_addon:
        raise AddonRefused(f"{tenant.name} has the BYOK add-on already.")
    record(tenant=tenant, actor=actor, action="addon.request", target="byok", request=request)
    subject = f"[Keyward] {tenant.name} ({tenant.slug}) asks for the BYOK add-on"
    body = (
        f"{actor.display or 'A member'} of {tenant.name} asked for the bring-your-own-key "
        f"add-on.\n\nTurn it on from the support console, on the tenant's page "
        f"(/support/t/{tenant.slug}/).\n"
    )
    transaction.on_commit(
        lambda: send_mail(
            subject=subject,
            message=body,
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[settings.KEYWARD_SUPPORT_EMAIL],
            fail_silently=True,
        )
    )


def _last_owner(membership: Membership) -> bool:
    if membership.role != Role.OWNER:
        return False
    owners = Membership.objects.filter(tenant_id=membership.tenant_id, role=Role.OWNER)
    return owners.count() <= 1


@transaction.atomic
def membership_add(
    *,
    tenant: Tenant,
    user: AbstractBaseUser,
    role: str,
    actor: Actor,
    request: HttpRequest | None = None,
) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if Membership.objects.filter(tenant=tenant, user_id=user.pk).exists():
        raise ValidationError({"user": f"{user.get_username()} is a member already."})
    membership = Membership.objects.create(tenant=tenant, user_id=user.pk, role=role)
    record(
        tenant=tenant,
        actor=actor,
        action="membership.add",
        target=user.get_username(),
        details={"role": role},
        request=request,
    )
    return membership


@transaction.atomic
def membership_change_role(
    *, membership: Membership, role: str, actor: Actor, request: HttpRequest | None = None
) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    # Lock the tenant, so that two owners demoting each other cannot both succeed.
    Tenant.objects.select_for_update().get(pk=membership.tenant_id)
    locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    old = locked.role
    if old == role:
        return locked
    if _last_owner(locked):
        raise ValidationError({"role": "A tenant needs at least one owner."})
    locked.role = role
    locked.save(update_fields=["role"])
    record(
        tenant=locked.tenant,
        actor=actor,
        action="membership.change_role",
        target=locked.user.get_username(),
        details={"from": old, "to": role},
        request=request,
    )
    return locked


@transaction.atomic
def membership_remove(
    *, membership: Membership, actor: Actor, request: HttpRequest | None = None
) -> None:
    Tenant.objects.select_for_update().get(pk=membership.tenant_id)
    locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    if _last_owner(locked):
        raise ValidationError("A tenant needs at least one owner.")
    username = locked.user.get_username()
    tenant = locked.tenant
    locked.delete()
    record(
        tenant=tenant,
        actor=actor,
        action="membership.remove",
        target=username,
        details={"role": locked.role},
        request=request,
    )


# --- Invitations ----------------------------------------------------------------
class InvitationRefused(Exception):
    """An invitation link that no longer works, or never did; the message is the user's."""

    MESSAGES = {
        "unknown": "This invitation link is not valid.",
        "expired": "This invitation has expired.",
        "used": "This invitation has been used already.",
        "revoked": "This invitation was withdrawn.",
        "account": "This invitation is for another account.",
    }

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(self.MESSAGES.get(reason, reason))


def invitation_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _send_invitation(invitation: Invitation, link: str) -> None:
    # A person by name; the command line or support staff as the operator.
    inviter = (
        invitation.invited_by.get_username()
        if invitation.invited_by is not None
        else "Your Keyward administrator"
    )
    hours = round((invitation.expires_at - invitation.created).total_seconds() / 3600)
    if users_with_email(invitation.email).exists():
        step = "You have a Keyward account already: sign in with it and accept here"
    else:
        step = "Choose your password here"
    body = (
        f"{inviter} invited you to {invitation.tenant.name} on Keyward, "
        f"as {invitation.get_role_display()}.\n\n"
        f"{step} (the link works once, for {hours} hours):\n\n"
        f"{link}\n\n"
        "If you did not expect this email, ignore it: nothing happens until the link is used.\n"
    )
    try:
        send_mail(
            subject=f"[Keyward] You are invited to {invitation.tenant.name}",
            message=body,
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[invitation.email],
        )
    except Exception:
        # Sent after commit: the invitation stands and the Members page lists
        # it, so an owner can invite again once mail works.
        logger.exception("The invitation email to %s could not be sent", invitation.email)


def _clean_email(email: str) -> str:
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise ValidationError({"email": f"{email!r} is not an email address."}) from None
    return email


@transaction.atomic
def invitation_create(
    *,
    tenant: Tenant,
    email: str,
    role: str,
    actor: Actor,
    site_url: str,
    invited_by: AbstractBaseUser | None = None,
    request: HttpRequest | None = None,
) -> Invitation:
    """Invite `email` to `tenant` as `role` and email them a single-use link.

    1. The email must be well formed and not a member's; the role one of the roles.
    2. An open invitation for the same person is withdrawn: the newest link is
       the only one that works.
    3. A random token is made; only its hash is stored. The link
       `site_url` + the join URL carries the token, and is emailed after commit.
    """
    email = _clean_email(email)
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    Tenant.objects.select_for_update().get(pk=tenant.pk)
    members = users_with_email(email).filter(memberships__tenant=tenant)
    if members.exists():
        raise ValidationError({"email": f"{email} is a member already."})
    now = timezone.now()
    superseded = Invitation.objects.filter(
        tenant=tenant, email=email, used_at=None, revoked_at=None
    ).update(revoked_at=now)
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role,
        invited_by_id=invited_by.pk if invited_by is not None else None,
        invited_by_display=actor.display,
        token_sha256=invitation_token_hash(token),
        expires_at=now + timedelta(hours=settings.KEYWARD_INVITATION_HOURS),
    )
    record(
        tenant=tenant,
        actor=actor,
        action="member.invite",
        target=email,
        details={
            "role": role,
            "expires_at": invitation.expires_at.isoformat(),
            "replaces": superseded,
        },
        request=request,
    )
    link = site_url.rstrip("/") + reverse("tenants:join", args=[tenant.slug, token])
    transaction.on_commit(lambda: _send_invitation(invitation, link))
    return invitation


@transaction.atomic
def invitation_revoke(
    *, invitation: Invitation, actor: Actor, request: HttpRequest | None = None
) -> Invitation:
    locked = Invitation.objects.select_for_update().select_related("tenant").get(pk=invitation.pk)
    if locked.used_at is not None or locked.revoked_at is not None:
        raise ValidationError("This invitation is no longer open.")
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    record(
        tenant=locked.tenant,
        actor=actor,
        action="member.invite_revoke",
        target=locked.email,
        details={"role": locked.role},
        request=request,
    )
    return locked


def invitation_open(*, slug: str, token: str) -> Invitation:
    """The invitation a link carries, if it still works; InvitationRefused otherwise.

    The token has 256 random bits, so looking its hash up by equality leaks
    nothing worth timing; the comparison below is for the slug's sake.
    """
    invitation = (
        Invitation.objects.select_related("tenant")
        .filter(token_sha256=invitation_token_hash(token))
        .first()
    )
    if invitation is None or not hmac.compare_digest(invitation.tenant.slug, slug):
        raise InvitationRefused("unknown")
    reason = invitation.refusal(timezone.now())
    if reason is not None:
        raise InvitationRefused(reason)
    return invitation


def invitation_record_refusal(
    *, slug: str, token: str, reason: str, request: HttpRequest | None = None
) -> None:
    """Audit a refused link: in its tenant's trail when the link was real, else the vendor's."""
    invitation = (
        Invitation.objects.select_related("tenant")
        .filter(token_sha256=invitation_token_hash(token), tenant__slug=slug)
        .first()
    )
    user = getattr(request, "user", None) if request is not None else None
    record(
        tenant=invitation.tenant if invitation else None,
        actor=Actor.for_user(user) if user is not None else Actor.anonymous(),
        action="member.invite_refused",
        outcome=Outcome.DENIED,
        target=invitation.email if invitation else slug[:200],
        reason=InvitationRefused.MESSAGES.get(reason, reason),
        request=request,
    )


@transaction.atomic
def invitation_accept(
    *, invitation: Invitation, user: AbstractBaseUser, request: HttpRequest | None = None
) -> Membership:
    """`user` (whose email the invitation names) joins the tenant; the link is spent."""
    locked = Invitation.objects.select_for_update().select_related("tenant").get(pk=invitation.pk)
    reason = locked.refusal(timezone.now())
    if reason is not None:
        raise InvitationRefused(reason)
    if not users_with_email(locked.email).filter(pk=user.pk).exists():
        raise InvitationRefused("account")
    actor = Actor.for_user(user)
    membership = membership_add(
        tenant=locked.tenant, user=user, role=locked.role, actor=actor, request=request
    )
    locked.used_at = timezone.now()
    locked.save(update_fields=["used_at"])
    record(
        tenant=locked.tenant,
        actor=actor,
        action="member.invite_accept",
        target=locked.email,
        details={"role": locked.role, "invited_by": locked.invited_by_display},
        request=request,
    )
    return membership


@transaction.atomic
def invitation_accept_new_account(
    *, invitation: Invitation, password: str, request: HttpRequest | None = None
) -> AbstractBaseUser:
    """Make the invited person's account with `password` (validated by the caller's
    form against the password validators), then accept the invitation as them."""
    # Locked first: a second submit of the same link waits here, then finds it spent.
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    reason = locked.refusal(timezone.now())
    if reason is not None:
        raise InvitationRefused(reason)
    if users_with_email(invitation.email).exists():
        raise InvitationRefused("account")
    user = get_user_model()._default_manager.create_user(
        username=invitation.email, email=invitation.email, password=password
    )
    invitation_accept(invitation=invitation, user=user, request=request)
    return user


@transaction.atomic
def tenant_onboard(
    *,
    name: str,
    slug: str,
    owner_email: str,
    actor: Actor,
    site_url: str,
    request: HttpRequest | None = None,
) -> tuple[Tenant, Invitation]:
    """A new tenant (with its key source and first data key) and its first owner's invitation.

    One transaction: a bad email leaves no tenant behind, a taken slug sends no email.
    The email is checked first, so a typo never reaches the key layer's bootstrap.
    """
    owner_email = _clean_email(owner_email)
    tenant = tenant_create(name=name, slug=slug, actor=actor, request=request)
    invitation = invitation_create(
        tenant=tenant,
        email=owner_email,
        role=Role.OWNER,
        actor=actor,
        site_url=site_url,
        request=request,
    )
    return tenant, invitation
