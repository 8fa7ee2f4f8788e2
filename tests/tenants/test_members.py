from __future__ import annotations

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from tenants.models import Membership
from tests.conftest import login


def role_url(slug: str, membership: Membership) -> str:
    return reverse("tenants:change_role", args=[slug, membership.pk])


def test_owner_changes_a_role_and_it_is_audited(acme) -> None:
    client = login(acme.owner, sudo=True)
    membership = acme.viewer.memberships.get()
    response = client.post(role_url("acme", membership), {"role": "auditor"})
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == "auditor"
    event = AuditEvent.objects.filter(action="membership.change_role").latest("seq")
    assert event.tenant == acme.tenant
    assert event.actor_display == f"{acme.owner.username} (Owner)"
    assert event.details == {"from": "viewer", "to": "auditor"}


@pytest.mark.parametrize("role", ["key_admin", "auditor", "viewer"])
def test_other_roles_get_403_and_nothing_changes(acme, role) -> None:
    client = login(getattr(acme, role), sudo=True)
    membership = acme.owner.memberships.get()
    before = AuditEvent.objects.count()
    response = client.post(role_url("acme", membership), {"role": "viewer"})
    assert response.status_code == 403
    membership.refresh_from_db()
    assert membership.role == "owner"
    assert AuditEvent.objects.count() == before


def test_viewer_without_sudo_still_gets_403_not_a_password_prompt(acme) -> None:
    response = login(acme.viewer).post(
        role_url("acme", acme.owner.memberships.get()), {"role": "viewer"}
    )
    assert response.status_code == 403


def test_another_tenants_member_is_404(acme, globex) -> None:
    client = login(acme.owner, sudo=True)
    foreign = globex.viewer.memberships.get()
    assert client.post(role_url("acme", foreign), {"role": "owner"}).status_code == 404
    assert client.post(role_url("globex", foreign), {"role": "owner"}).status_code == 404
    foreign.refresh_from_db()
    assert foreign.role == "viewer"


def test_wrong_method_is_405(acme) -> None:
    client = login(acme.owner, sudo=True)
    assert client.get(role_url("acme", acme.viewer.memberships.get())).status_code == 405


def test_unknown_role_changes_nothing(acme) -> None:
    client = login(acme.owner, sudo=True)
    membership = acme.viewer.memberships.get()
    response = client.post(role_url("acme", membership), {"role": "god"}, follow=True)
    assert "Choose one of the listed roles." in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == "viewer"


def test_the_last_owner_cannot_be_demoted_or_removed(acme) -> None:
    client = login(acme.owner, sudo=True)
    membership = acme.owner.memberships.get()
    response = client.post(role_url("acme", membership), {"role": "viewer"}, follow=True)
    assert "A tenant needs at least one owner." in response.content.decode()
    response = client.post(reverse("tenants:remove", args=["acme", membership.pk]), follow=True)
    assert "A tenant needs at least one owner." in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == "owner"


def test_owner_removes_a_member(acme) -> None:
    client = login(acme.owner, sudo=True)
    membership = acme.auditor.memberships.get()
    client.post(reverse("tenants:remove", args=["acme", membership.pk]))
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditEvent.objects.filter(
        action="membership.remove", target=acme.auditor.username
    ).exists()


def test_members_page_lists_only_this_tenant(acme, globex) -> None:
    body = login(acme.owner).get(reverse("tenants:members", args=["acme"])).content.decode()
    assert acme.viewer.username in body
    assert globex.viewer.username not in body
