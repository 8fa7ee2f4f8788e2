from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD, make_tenant

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_owner_signs_in_finds_their_login_and_exports_csv(page: Page, sign_in: Any) -> None:
    acme = make_tenant("Acme", "acme")
    email = acme.owner.username
    sign_in(email, PASSWORD)

    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    expect(page.get_by_test_id("tenant-state")).to_have_text("Vendor-managed key")

    page.get_by_role("link", name="Audit trail", exact=True).click()
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    login_row = (
        page.get_by_test_id("audit-row").filter(has_text="auth.login").filter(has_text=email)
    )
    expect(login_row).to_have_count(1)
    expect(login_row).to_contain_text("Success")

    with page.expect_download() as info:
        page.get_by_test_id("export-csv").click()
    download = info.value
    assert download.suggested_filename.startswith("keyward-audit-acme-")
    text = download.path().read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert any(r["action"] == "auth.login" and r["actor_display"] == email for r in rows)


def test_filtering_the_trail_with_htmx(page: Page, sign_in: Any) -> None:
    acme = make_tenant("Acme", "acme")
    sign_in(acme.auditor.username, PASSWORD)
    page.get_by_role("link", name="Audit trail", exact=True).click()
    page.get_by_label("Action").fill("membership.add")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"action=membership\.add"))
    rows = page.get_by_test_id("audit-row")
    expect(rows).to_have_count(4)
    expect(rows.filter(has_text="auth.login")).to_have_count(0)


def test_wrong_password_shows_a_generic_message(page: Page, sign_in: Any) -> None:
    acme = make_tenant("Acme", "acme")
    sign_in(acme.owner.username, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Your email or password is not correct.")
