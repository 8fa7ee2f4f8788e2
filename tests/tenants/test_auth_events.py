from __future__ import annotations

import pytest
from django.test import Client, override_settings

from audit.models import AuditEvent
from tests.conftest import PASSWORD


def sign_in(client: Client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def test_login_is_audited_in_each_tenant_of_the_user(acme) -> None:
    response = sign_in(Client(), acme.owner.username, PASSWORD)
    assert response.status_code == 302
    event = AuditEvent.objects.filter(tenant=acme.tenant, action="auth.login").get()
    assert event.outcome == "success"
    assert event.actor_display == acme.owner.username
    assert event.ip == "127.0.0.1"
    assert event.request_id


def test_wrong_password_gets_a_generic_message_and_is_audited(acme) -> None:
    response = sign_in(Client(), acme.owner.username, "Tr0ub4dor&3")
    assert response.status_code == 200
    assert "Your email or password is not correct." in response.content.decode()
    event = AuditEvent.objects.filter(tenant=acme.tenant, action="auth.login").get()
    assert event.outcome == "failure"
    assert "Tr0ub4dor" not in event.reason + str(
        event.details
    )  # the attempt's password is not kept


def test_unknown_user_gets_the_same_message_in_the_vendor_chain(db) -> None:
    response = sign_in(Client(), "ghost@nowhere.test", "whatever")
    assert "Your email or password is not correct." in response.content.decode()
    event = AuditEvent.objects.get(chain="vendor", action="auth.login")
    assert event.outcome == "failure"
    assert event.actor_display == "ghost@nowhere.test"


@override_settings(AXES_FAILURE_LIMIT=3)
def test_repeated_failures_lock_the_account_and_are_audited(acme) -> None:
    client = Client()
    for _ in range(3):
        sign_in(client, acme.owner.username, "wrong")
    locked = sign_in(client, acme.owner.username, PASSWORD)
    assert locked.status_code == 429
    assert "Sign-in temporarily locked" in locked.content.decode()
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="auth.lockout").exists()
    assert not AuditEvent.objects.filter(
        tenant=acme.tenant, action="auth.login", outcome="success"
    ).exists()


def test_logout_is_audited(acme) -> None:
    client = Client()
    sign_in(client, acme.viewer.username, PASSWORD)
    response = client.post("/logout/")
    assert response.status_code in (200, 302)
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="auth.logout").exists()


@pytest.mark.parametrize("method", ["get"])
def test_logout_refuses_get(acme, method) -> None:
    client = Client()
    sign_in(client, acme.viewer.username, PASSWORD)
    assert getattr(client, method)("/logout/").status_code == 405
