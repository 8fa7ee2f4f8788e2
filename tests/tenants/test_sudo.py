from __future__ import annotations

import time

from django.urls import reverse

from audit.models import AuditEvent
from tenants.sudo import SESSION_KEY
from tests.conftest import PASSWORD, login


def test_key_changing_action_without_recent_password_goes_to_sudo(acme) -> None:
    client = login(acme.owner)
    membership = acme.viewer.memberships.get()
    url = reverse("tenants:change_role", args=["acme", membership.pk])
    response = client.post(
        url, {"role": "auditor"}, HTTP_REFERER="http://testserver/t/acme/members/"
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:sudo"))
    assert "next=%2Ft%2Facme%2Fmembers%2F" in response["Location"]
    membership.refresh_from_db()
    assert membership.role == "viewer"


def test_sudo_with_the_right_password_grants_and_returns(acme) -> None:
    client = login(acme.owner)
    response = client.post(
        reverse("console:sudo"), {"password": PASSWORD, "next": "/t/acme/members/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/t/acme/members/"
    assert AuditEvent.objects.filter(action="auth.sudo", actor_display=acme.owner.username).exists()
    membership = acme.viewer.memberships.get()
    response = client.post(
        reverse("tenants:change_role", args=["acme", membership.pk]), {"role": "auditor"}
    )
    membership.refresh_from_db()
    assert membership.role == "auditor"


def test_sudo_with_a_wrong_password_is_refused(acme) -> None:
    client = login(acme.owner)
    response = client.post(reverse("console:sudo"), {"password": "nope", "next": "/t/acme/"})
    assert response.status_code == 200
    assert "That password is not correct." in response.content.decode()
    assert SESSION_KEY not in client.session


def test_sudo_refuses_an_offsite_next(acme) -> None:
    client = login(acme.owner)
    response = client.post(
        reverse("console:sudo"), {"password": PASSWORD, "next": "https://evil.example/"}
    )
    assert response["Location"] == reverse("console:home")


def test_sudo_expires_after_ten_minutes(acme) -> None:
    client = login(acme.owner, sudo=True)
    session = client.session
    session[SESSION_KEY] = time.time() - 601
    session.save()
    membership = acme.viewer.memberships.get()
    response = client.post(
        reverse("tenants:change_role", args=["acme", membership.pk]), {"role": "auditor"}
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:sudo"))


def test_htmx_requests_are_sent_to_sudo_with_hx_redirect(acme) -> None:
    client = login(acme.owner)
    membership = acme.viewer.memberships.get()
    response = client.post(
        reverse("tenants:change_role", args=["acme", membership.pk]),
        {"role": "auditor"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith(reverse("console:sudo"))
