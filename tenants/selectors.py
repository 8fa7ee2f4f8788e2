from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet
from django.db.models.expressions import Combinable
from django.utils import timezone

from tenants.models import (
    PAUSED_STATES,
    AccessRequest,
    AccessState,
    Invitation,
    Membership,
    Tenant,
)
from tenants.staff import is_support_staff


def tenants_for_user(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Tenant]:
    """The tenants a person may open: their own, or every tenant for support staff."""
    if not user.is_authenticated:
        return Tenant.objects.none()
    if is_support_staff(user):
        return Tenant.objects.all()
    return Tenant.objects.filter(memberships__user_id=user.pk)


def memberships_for_user(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Membership]:
    if not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.filter(user_id=user.pk).select_related("tenant")


def memberships_of_tenant(tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("role")


def users_with_email(email: str) -> QuerySet[Any]:
    """Accounts an email names: people sign in with their email as their username."""
    return get_user_model()._default_manager.filter(
        Q(username__iexact=email) | Q(email__iexact=email)
    )


def open_invitations_of_tenant(tenant: Tenant) -> QuerySet[Invitation]:
    """Invitations not used or withdrawn yet, expired ones included (marked as such)."""
    return Invitation.objects.filter(tenant=tenant, used_at=None, revoked_at=None).order_by(
        "-created"
    )


def paused_tenants(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Tenant]:
    return tenants_for_user(user).filter(state__in=PAUSED_STATES)


def access_requests_of_tenant(tenant: Tenant, limit: int = 100) -> list[AccessRequest]:
    """Vendor support's requests to the tenant, newest first, with their answers."""
    return list(
        AccessRequest.objects.filter(tenant=tenant)
        .prefetch_related("decisions")
        .order_by("-created")[:limit]
    )


@dataclass(frozen=True)
class SupportAccessNow:
    pending: int
    open_until: datetime | None  # the latest end of the grants open now


def support_access_open(
    tenant: Tenant, *, now: datetime | Combinable | None = None
) -> QuerySet[AccessRequest]:
    """Vendor support's requests to the tenant waiting for an answer or granted now.

    `now` may be the database's clock (`Now()`), for a statement compiled once.
    """
    now = timezone.now() if now is None else now
    return AccessRequest.objects.filter(
        Q(state=AccessState.PENDING, answer_by__gt=now)
        | Q(state=AccessState.APPROVED, ends_at__gt=now),
        tenant=tenant,
    )


def support_access_now(
    tenant: Tenant, *, now: datetime | Combinable | None = None
) -> SupportAccessNow | None:
    """What the tenant's banner says about vendor support's access, if anything."""
    rows = support_access_open(tenant, now=now).values_list("state", "ends_at")
    pending = sum(1 for state, _ in rows if state == AccessState.PENDING)
    ends = [end for state, end in rows if state == AccessState.APPROVED and end]
    if not pending and not ends:
        return None
    return SupportAccessNow(pending, max(ends) if ends else None)
