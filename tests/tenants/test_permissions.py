"""How a person acting in a tenant is named in its audit trail (TenantAccess.actor)."""

from __future__ import annotations

from audit.models import ActorKind
from tenants.permissions import get_tenant_for_user


def test_a_member_is_named_with_their_role_in_the_tenant(acme) -> None:
    for role, label in (
        ("owner", "Owner"),
        ("key_admin", "Key administrator"),
        ("auditor", "Auditor"),
        ("viewer", "Viewer"),
    ):
        user = getattr(acme, role)
        actor = get_tenant_for_user(user, "acme").actor(user)
        assert (actor.kind, actor.id) == (ActorKind.USER, str(user.pk))
        assert actor.display == f"{user.get_username()} ({label})"


def test_support_staff_are_named_as_support(acme, support) -> None:
    access = get_tenant_for_user(support, "acme")
    actor = access.actor(support)
    assert (actor.kind, actor.id, actor.display) == (
        ActorKind.SUPPORT,
        str(support.pk),
        support.get_username(),
    )
