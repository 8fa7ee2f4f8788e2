"""Who may do what in a tenant.

Roles map onto permissions here and nowhere else; views ask for a permission,
never for a role name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import wraps
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase

from audit.services import Actor
from tenants.models import Membership, Role, Tenant
from tenants.selectors import memberships_for_user
from tenants.staff import is_support_staff


class Perm(StrEnum):
    VIEW_STATUS = "view_status"
    VIEW_AUDIT = "view_audit"
    EXPORT_AUDIT = "export_audit"
    MANAGE_KEYS = "manage_keys"
    MANAGE_MEMBERS = "manage_members"
    DESTROY_KEYS = "destroy_keys"
    REMOVE_BYOK = "remove_byok"
    # API tokens read the tenant's decrypted data: owners only.
    MANAGE_API_TOKENS = "manage_api_tokens"
    # Where the audit trail is streamed (a SIEM): owners only, as it sends
    # every event out of Keyward.
    CONFIGURE_AUDIT_STREAM = "configure_audit_stream"


# Whoever may read the audit trail may export it: an export holds the same
# events the viewer pages through, so refusing it protects nothing.
ROLE_PERMS: dict[str, frozenset[Perm]] = {
    Role.OWNER: frozenset(Perm),
    Role.KEY_ADMIN: frozenset(
        {Perm.VIEW_STATUS, Perm.VIEW_AUDIT, Perm.EXPORT_AUDIT, Perm.MANAGE_KEYS}
    ),
    Role.AUDITOR: frozenset({Perm.VIEW_STATUS, Perm.VIEW_AUDIT, Perm.EXPORT_AUDIT}),
    Role.VIEWER: frozenset({Perm.VIEW_STATUS}),
}
# Vendor support staff read metadata only; they never act on a tenant's keys.
SUPPORT_PERMS: frozenset[Perm] = frozenset({Perm.VIEW_STATUS})


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str | None  # None for vendor support staff
    perms: frozenset[Perm]

    @property
    def is_support(self) -> bool:
        return self.role is None

    def can(self, perm: Perm | str) -> bool:
        return Perm(perm) in self.perms

    def actor(self, user: AbstractBaseUser | AnonymousUser) -> Actor:
        """`user` acting in this tenant, as its audit trail names them: with their
        role here, or as the vendor's support staff."""
        if self.role is None:
            return Actor.for_user(user, support=True)
        return Actor.for_user(user, role=Role(self.role).label)


def get_tenant_for_user(
    user: AbstractBaseUser | AnonymousUser,
    slug: str,
    perm: Perm = Perm.VIEW_STATUS,
    *,
    memberships: Sequence[Membership] | None = None,
) -> TenantAccess:
    """The tenant `slug` as `user` may see it.

    A tenant the user has no business with is a 404 (its existence does not
    leak); a tenant they belong to but may not act on in this way is a 403.
    `memberships`, when given, are all of the user's (`user_memberships`):
    the tenant is looked for among them instead of asked for again.
    """
    if not user.is_authenticated:
        raise Http404
    if memberships is None:
        membership = (
            Membership.objects.select_related("tenant")
            .filter(user_id=user.pk, tenant__slug=slug)
            .first()
        )
    else:
        membership = next(
            (m for m in memberships if m.user_id == user.pk and m.tenant.slug == slug), None
        )
    if membership is not None:
        access = TenantAccess(membership.tenant, membership.role, ROLE_PERMS[membership.role])
    elif is_support_staff(user):
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise Http404
        access = TenantAccess(tenant, None, SUPPORT_PERMS)
    else:
        raise Http404
    if not access.can(perm):
        raise PermissionDenied
    return access


def tenant_for_request(
    request: HttpRequest, slug: str, perm: Perm = Perm.VIEW_STATUS
) -> TenantAccess:
    """`get_tenant_for_user` for a view; remembers the result for the page shell.

    The user's memberships are read once, whole, and remembered too: the shell's
    tenant switcher lists them, so a page asks for them once, not twice.
    """
    memberships = user_memberships(request.user)
    request.user_memberships = memberships  # type: ignore[attr-defined]
    access = get_tenant_for_user(request.user, slug, perm, memberships=memberships)
    request.tenant_access = access  # type: ignore[attr-defined]
    return access


def user_memberships(user: AbstractBaseUser | AnonymousUser) -> list[Membership]:
    """All of `user`'s memberships, with their tenants (a handful per person)."""
    return list(memberships_for_user(user))


def with_tenant(
    perm: Perm,
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Authorize before anything else runs: the view gets `access` instead of `slug`.

    Placed above `sudo_required`, so that another tenant's URL is a 404 and a
    read-only role a 403 even before any password is asked for.
    """

    def decorator(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @wraps(view)
        def wrapper(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
            access = tenant_for_request(request, slug, perm)
            return view(request, access, *args, **kwargs)

        return wrapper

    return decorator
