"""Who may do what in a tenant (ROLE_PERMS), and how a person acting in it is
named in its audit trail (TenantAccess.actor)."""

from __future__ import annotations

import pytest

from audit.models import ActorKind
from tenants.models import Role
from tenants.permissions import ROLE_PERMS, SUPPORT_PERMS, Perm, get_tenant_for_user


@pytest.mark.parametrize("perms", [*ROLE_PERMS.values(), SUPPORT_PERMS])
def test_who_may_read_the_audit_trail_may_export_it(perms) -> None:
    assert (Perm.VIEW_AUDIT in perms) == (Perm.EXPORT_AUDIT in perms)


def test_every_role_but_the_viewer_reads_the_audit_trail() -> None:
    readers = {role for role, perms in ROLE_PERMS.items() if Perm.VIEW_AUDIT in perms}
    assert readers == {Role.OWNER, Role.KEY_ADMIN, Role.AUDITOR}
    assert Perm.VIEW_AUDIT not in SUPPORT_PERMS  # the trail names people: not metadata


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
