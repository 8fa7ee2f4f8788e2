from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail
from playwright.sync_api import Browser, Page, expect

from tests.conftest import PASSWORD, make_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NEW_PASSWORD = "plum orbit lantern 42"


def test_owner_invites_a_colleague_who_sets_a_password_and_joins(
    page: Page, sign_in: Any, browser: Browser, live_server: Any
) -> None:
    make_tenant("Acme", "acme")
    sign_in("owner@acme.test", PASSWORD)
    page.goto(f"{live_server.url}/t/acme/members/")
    page.get_by_label("Email").fill("carol@acme.test")
    page.get_by_label("Role", exact=True).select_option("key_admin")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_role("status")).to_contain_text("Invitation sent to carol@acme.test")
    row = page.get_by_role("row").filter(has_text="carol@acme.test")
    expect(row).to_contain_text("Key administrator")

    link = re.search(r"http\S+/join/\S+/", str(mail.outbox[-1].body))
    assert link
    context = browser.new_context()
    guest = context.new_page()
    try:
        guest.goto(link.group(0))
        expect(guest.get_by_role("heading", name="Join Acme")).to_be_visible()
        guest.get_by_label("Choose a password").fill(NEW_PASSWORD)
        guest.get_by_label("Repeat it").fill(NEW_PASSWORD)
        guest.get_by_role("button", name="Set password and join").click()
        expect(guest.get_by_role("heading", name="Acme")).to_be_visible()
        expect(guest.get_by_role("status")).to_contain_text("Welcome to Acme")

        # The link works once.
        guest.goto(link.group(0))
        expect(guest.get_by_role("alert")).to_have_text("This invitation has been used already.")
        expect(guest.get_by_text("Ask your tenant's owner to invite you again")).to_be_visible()
    finally:
        context.close()

    page.reload()
    expect(page.get_by_role("row").filter(has_text="carol@acme.test")).to_have_count(1)
    expect(page.get_by_text("No open invitations.")).to_be_visible()
