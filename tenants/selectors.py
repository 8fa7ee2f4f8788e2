from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from tenants.models import PAUSED_STATES, Membership, Tenant
from tenants.permissions import is_support_staff


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


def paused_tenants(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Tenant]:
    return tenants_for_user(user).filter(state__in=PAUSED_STATES)
