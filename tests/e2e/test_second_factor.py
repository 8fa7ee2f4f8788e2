from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from playwright.sync_api import Page, expect

from console.mfa.models import Factor
from tests.conftest import PASSWORD, make_user
from tests.console.mfa_helpers import code_at_step, code_now

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_old_attempts() -> None:
    cache.clear()


def test_support_sets_up_an_authenticator_app_and_signs_in_with_it(
    page: Page, sign_in: Any, live_server: Any
) -> None:
    make_user("support@vendor.test", is_staff=True)
    sign_in("support@vendor.test", PASSWORD)
    expect(page.get_by_role("heading", name="Set up an authenticator app")).to_be_visible()
    expect(page.get_by_role("img", name="QR code")).to_be_visible()
    secret = page.get_by_test_id("totp-secret").inner_text()

    page.get_by_label("Code from the app").fill("000000")
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("alert")).to_contain_text("That code is not right")

    page.get_by_label("Code from the app").fill(code_now(secret))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = page.get_by_test_id("recovery-codes").get_by_role("listitem").all_inner_texts()
    assert len(codes) == 10
    page.get_by_role("link", name="I have saved them").click()
    expect(page.get_by_test_id("whoami")).to_contain_text("support@vendor.test")

    page.get_by_role("button", name="Sign out").click()
    sign_in("support@vendor.test", PASSWORD)
    expect(page.get_by_role("heading", name="Second factor")).to_be_visible()
    used = Factor.objects.get(confirmed=True).last_step
    assert used is not None
    page.get_by_label("Code").fill(code_at_step(secret, used))  # replayed
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text("That code was used already")
    page.get_by_label("Code").fill(code_at_step(secret, used + 1))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_test_id("whoami")).to_contain_text("support@vendor.test")

    page.get_by_role("button", name="Sign out").click()
    sign_in("support@vendor.test", PASSWORD)
    page.get_by_label("Code").fill(codes[0])
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("status")).to_contain_text("signed in with a recovery code; 9 are left")
    page.goto(f"{live_server.url}/account/second-factor/")
    expect(page.get_by_test_id("codes-left")).to_contain_text("9 recovery codes left")
