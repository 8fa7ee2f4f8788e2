"""A security key through Chromium's virtual authenticator: set up, then sign in.

WebAuthn needs a secure context and a relying party id that is a name, not an
address: the live server is opened as http://localhost.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.core.cache import cache
from playwright.sync_api import Page, expect

from audit.models import AuditEvent, Outcome
from console.mfa.models import Factor, FactorKind
from tenants.sudo import SECOND_FACTOR_KEY, SESSION_KEY
from tests.conftest import PASSWORD, make_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_old_attempts() -> None:
    cache.clear()


def virtual_authenticator(page: Page) -> tuple[Any, str]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


def test_a_member_sets_up_a_security_key_and_signs_in_with_it(page: Page, live_server: Any) -> None:
    acme = make_tenant("Acme", "acme")
    base = live_server.url.replace("127.0.0.1", "localhost")
    cdp, authenticator = virtual_authenticator(page)

    def sign_in() -> None:
        page.goto(f"{base}/login/")
        page.get_by_label("Email").fill(acme.owner.username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()

    sign_in()
    expect(page.get_by_test_id("whoami")).to_contain_text(acme.owner.username)
    page.get_by_role("link", name="Second factor").click()
    page.get_by_role("link", name="Add a security key or passkey").click()
    page.get_by_label("Name").fill("Blue key")
    page.get_by_role("button", name="Add security key").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    factor = Factor.objects.get(user=acme.owner, kind=FactorKind.WEBAUTHN)
    assert factor.name == "Blue key" and factor.confirmed
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    assert len(credentials["credentials"]) == 1
    page.get_by_role("link", name="I have saved them").click()

    page.get_by_role("button", name="Sign out").click()
    sign_in()
    expect(page.get_by_role("heading", name="Second factor")).to_be_visible()
    page.get_by_role("button", name="Use your security key").click()
    expect(page.get_by_test_id("whoami")).to_contain_text(acme.owner.username)
    factor.refresh_from_db()
    assert factor.sign_count >= 1 or factor.last_used_at is not None
    assert AuditEvent.objects.filter(
        action="auth.second_factor",
        outcome=Outcome.SUCCESS,
        tenant=acme.tenant,
        details__kind="webauthn",
    ).exists()


def test_a_tenant_that_requires_it_asks_for_the_key_in_sudo_mode(
    page: Page, live_server: Any
) -> None:
    acme = make_tenant("Acme", "acme", second_factor=True)
    base = live_server.url.replace("127.0.0.1", "localhost")
    virtual_authenticator(page)
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(acme.owner.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{base}/account/second-factor/security-key/")
    page.get_by_role("button", name="Add security key").click()
    page.get_by_role("link", name="I have saved them").click()

    # Some minutes later: sudo mode has ended.
    cookie = next(c for c in page.context.cookies() if c["name"] == settings.SESSION_COOKIE_NAME)
    session = SessionStore(session_key=cookie["value"])
    session.pop(SESSION_KEY)
    session.pop(SECOND_FACTOR_KEY)
    session.save()

    page.goto(f"{base}/t/acme/members/")
    page.get_by_role("button", name="Ask for the password only").click()
    expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Use your security key").click()
    expect(page.get_by_role("heading", name="Members")).to_be_visible()
    page.get_by_role("button", name="Ask for the password only").click()
    expect(page.get_by_role("status")).to_contain_text("Key actions now need the password only")
    sudo = AuditEvent.objects.filter(action="auth.sudo", tenant=acme.tenant).latest("seq")
    assert sudo.details == {"second_factor": True}
