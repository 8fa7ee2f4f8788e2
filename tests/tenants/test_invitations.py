from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent, Outcome
from tenants.models import Invitation, Membership
from tests.conftest import PASSWORD, login

NEW_PASSWORD = "plum orbit lantern 42"


def invite_url(slug: str = "acme") -> str:
    return reverse("tenants:invite", args=[slug])


def sent_link() -> str:
    assert mail.outbox, "no email was sent"
    match = re.search(r"https?://\S+/join/\S+/", str(mail.outbox[-1].body))
    assert match, mail.outbox[-1].body
    return match.group(0)


def path_of(link: str) -> str:
    return "/" + link.split("/", 3)[3]


def invite(users: Any, capture: Any, email: str = "new@acme.test", role: str = "auditor") -> str:
    client = login(users.owner, sudo=True)
    with capture(execute=True):
        response = client.post(invite_url(users.tenant.slug), {"email": email, "role": role})
    assert response.status_code == 302
    return path_of(sent_link())


def test_owner_invites_by_email_and_only_a_hash_is_kept(
    acme, django_capture_on_commit_callbacks
) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    token = path.rstrip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get(email="new@acme.test")
    assert invitation.role == "auditor"
    assert invitation.invited_by == acme.owner
    assert token not in invitation.token_sha256
    assert all(token not in str(value) for value in Invitation.objects.values().get().values())
    assert mail.outbox[-1].to == ["new@acme.test"]
    assert "Acme" in mail.outbox[-1].subject
    assert "Choose your password" in str(mail.outbox[-1].body)
    assert "owner@acme.test invited you to Acme on Keyward, as Auditor" in str(mail.outbox[-1].body)
    hours = (invitation.expires_at - invitation.created).total_seconds() / 3600
    assert round(hours) == 72
    event = AuditEvent.objects.get(action="member.invite")
    assert (event.tenant, event.target, event.actor_display) == (
        acme.tenant,
        "new@acme.test",
        f"{acme.owner.username} (Owner)",
    )
    assert token not in str(event.details)


def test_the_invitation_lifetime_is_a_setting(
    acme, settings, django_capture_on_commit_callbacks
) -> None:
    settings.KEYWARD_INVITATION_HOURS = 5
    invite(acme, django_capture_on_commit_callbacks)
    invitation = Invitation.objects.get()
    assert invitation.expires_at - invitation.created == pytest.approx(
        timedelta(hours=5), abs=timedelta(seconds=5)
    )


def test_invited_person_sets_a_password_and_becomes_a_member(
    acme, django_capture_on_commit_callbacks
) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    client = Client()
    page = client.get(path)
    assert page.status_code == 200
    assert "Join Acme" in page.content.decode()
    response = client.post(path, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("console:dashboard", args=["acme"])
    user = get_user_model().objects.get(username="new@acme.test")
    assert user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(user=user, tenant=acme.tenant).role == "auditor"
    assert client.get(reverse("console:dashboard", args=["acme"])).status_code == 200
    assert Invitation.objects.get().used_at is not None
    assert AuditEvent.objects.filter(
        action="member.invite_accept", target="new@acme.test", actor_display="new@acme.test"
    ).exists()


def test_a_weak_password_is_refused_by_the_validators(
    acme, django_capture_on_commit_callbacks
) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    response = Client().post(path, {"new_password1": "12345678", "new_password2": "12345678"})
    assert response.status_code == 200
    assert "too short" in response.content.decode()
    assert not get_user_model().objects.filter(username="new@acme.test").exists()
    assert Invitation.objects.get().used_at is None


def _refused(client: Client, path: str, reason: str, status: int = 410) -> None:
    response = client.get(path)
    assert response.status_code == status
    body = response.content.decode()
    assert "Ask your tenant's owner to invite you again" in body
    event = AuditEvent.objects.filter(action="member.invite_refused").latest("time")
    assert event.outcome == Outcome.DENIED
    assert reason in event.reason
    posted = client.post(path, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert posted.status_code == status


def test_a_used_link_is_refused(acme, django_capture_on_commit_callbacks) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    Client().post(path, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    _refused(Client(), path, "used already")
    assert Membership.objects.filter(user__username="new@acme.test").count() == 1


def test_an_expired_link_is_refused(acme, django_capture_on_commit_callbacks) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    _refused(Client(), path, "expired")
    event = AuditEvent.objects.filter(action="member.invite_refused").latest("time")
    assert event.tenant == acme.tenant
    assert not get_user_model().objects.filter(username="new@acme.test").exists()


def test_a_revoked_link_is_refused(acme, django_capture_on_commit_callbacks) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    invitation = Invitation.objects.get()
    client = login(acme.owner, sudo=True)
    response = client.post(reverse("tenants:revoke_invite", args=["acme", invitation.pk]))
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="member.invite_revoke", target=invitation.email)
    _refused(Client(), path, "withdrawn")
    assert not get_user_model().objects.filter(username="new@acme.test").exists()


def test_a_forged_link_is_refused_in_the_vendor_trail(acme) -> None:
    path = reverse("tenants:join", args=["acme", "not-a-real-token"])
    _refused(Client(), path, "not valid", status=404)
    event = AuditEvent.objects.filter(action="member.invite_refused").latest("time")
    assert event.tenant is None


def test_a_link_used_under_another_tenants_slug_is_refused(
    acme, globex, django_capture_on_commit_callbacks
) -> None:
    path = invite(acme, django_capture_on_commit_callbacks)
    _refused(Client(), path.replace("/t/acme/", "/t/globex/"), "not valid", status=404)


def test_inviting_again_replaces_the_open_link(acme, django_capture_on_commit_callbacks) -> None:
    first = invite(acme, django_capture_on_commit_callbacks)
    second = invite(acme, django_capture_on_commit_callbacks, role="viewer")
    assert first != second
    _refused(Client(), first, "withdrawn")
    assert Client().get(second).status_code == 200


def test_an_existing_account_signs_in_and_joins(
    acme, globex, django_capture_on_commit_callbacks
) -> None:
    path = invite(acme, django_capture_on_commit_callbacks, email=globex.viewer.username)
    assert "sign in with it and accept" in str(mail.outbox[-1].body)
    assert "Sign in as" in Client().get(path).content.decode()
    stranger = login(acme.viewer)
    assert "You are signed in as" in stranger.get(path).content.decode()
    assert stranger.post(path).status_code == 200
    assert not Membership.objects.filter(user=globex.viewer, tenant=acme.tenant).exists()
    client = login(globex.viewer)
    assert client.get(path).status_code == 200
    response = client.post(path)
    assert response["Location"] == reverse("console:dashboard", args=["acme"])
    assert Membership.objects.get(user=globex.viewer, tenant=acme.tenant).role == "auditor"
    assert globex.viewer.check_password(PASSWORD)


def test_a_member_cannot_be_invited_and_a_bad_email_is_refused(acme) -> None:
    client = login(acme.owner, sudo=True)
    response = client.post(
        invite_url(), {"email": acme.viewer.username, "role": "owner"}, follow=True
    )
    assert "is a member already" in response.content.decode()
    response = client.post(invite_url(), {"email": "not an email", "role": "viewer"}, follow=True)
    assert "Enter an email address" in response.content.decode()
    response = client.post(invite_url(), {"email": "a@b.test", "role": "god"}, follow=True)
    assert "choose one of the listed roles" in response.content.decode()
    assert not Invitation.objects.exists()
    assert not mail.outbox


def test_members_page_lists_open_invitations_only_of_this_tenant(
    acme, globex, django_capture_on_commit_callbacks
) -> None:
    invite(acme, django_capture_on_commit_callbacks, email="pending@acme.test")
    invite(globex, django_capture_on_commit_callbacks, email="pending@globex.test")
    body = login(acme.owner).get(reverse("tenants:members", args=["acme"])).content.decode()
    assert "pending@acme.test" in body
    assert "pending@globex.test" not in body
    assert 'name="email"' in body


@pytest.mark.parametrize("role", ["key_admin", "auditor", "viewer"])
def test_other_roles_cannot_invite_or_revoke(
    acme, role, django_capture_on_commit_callbacks
) -> None:
    invite(acme, django_capture_on_commit_callbacks)
    invitation = Invitation.objects.get()
    client = login(getattr(acme, role), sudo=True)
    assert client.post(invite_url(), {"email": "x@acme.test", "role": "owner"}).status_code == 403
    revoke = reverse("tenants:revoke_invite", args=["acme", invitation.pk])
    assert client.post(revoke).status_code == 403
    assert Invitation.objects.count() == 1
    assert Invitation.objects.get().revoked_at is None


def test_another_tenants_invitation_is_404(
    acme, globex, django_capture_on_commit_callbacks
) -> None:
    invite(globex, django_capture_on_commit_callbacks)
    foreign = Invitation.objects.get()
    client = login(acme.owner, sudo=True)
    for slug in ("acme", "globex"):
        url = reverse("tenants:revoke_invite", args=[slug, foreign.pk])
        assert client.post(url).status_code == 404
    assert Invitation.objects.get().revoked_at is None


def test_inviting_and_revoking_need_sudo(acme, django_capture_on_commit_callbacks) -> None:
    invite(acme, django_capture_on_commit_callbacks)
    invitation = Invitation.objects.get()
    client = login(acme.owner)
    response = client.post(invite_url(), {"email": "x@acme.test", "role": "viewer"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:sudo"))
    response = client.post(reverse("tenants:revoke_invite", args=["acme", invitation.pk]))
    assert response["Location"].startswith(reverse("console:sudo"))
    assert Invitation.objects.count() == 1
    assert Invitation.objects.get().revoked_at is None


def test_wrong_methods_are_405(acme) -> None:
    client = login(acme.owner, sudo=True)
    assert client.get(invite_url()).status_code == 405
    join = reverse("tenants:join", args=["acme", "x"])
    assert client.put(join).status_code == 405


def test_a_second_submit_of_the_same_link_is_refused(
    acme, django_capture_on_commit_callbacks
) -> None:
    from tenants.services import InvitationRefused, invitation_accept_new_account

    invite(acme, django_capture_on_commit_callbacks)
    stale = Invitation.objects.get()  # read before the first submit, as a racing request would
    invitation_accept_new_account(invitation=stale, password=NEW_PASSWORD)
    with pytest.raises(InvitationRefused) as refused:
        invitation_accept_new_account(invitation=stale, password=NEW_PASSWORD)
    assert refused.value.reason == "used"
    assert get_user_model().objects.filter(username="new@acme.test").count() == 1
