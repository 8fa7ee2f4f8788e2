"""Playwright against Debian's Chromium; a screenshot is kept for every failed test."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from console.mfa.models import Factor
from console.mfa.services import totp_begin, totp_confirm
from tests.conftest import PASSWORD, make_user
from tests.console.mfa_helpers import code_at_step, code_now

# Playwright's sync API runs an event loop in this thread; the ORM calls the
# tests make around it are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()


@pytest.fixture
def sign_in(page: Page, live_server: Any) -> Any:
    def sign_in_as(email: str, password: str) -> Page:
        page.goto(f"{live_server.url}/login/")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        return page

    return sign_in_as


def staff_with_authenticator(email: str) -> str:
    """Vendor staff with a confirmed authenticator app; returns its secret.

    Staff must pass a second factor at every sign-in: `sign_in_with_code` does.
    """
    user = make_user(email, is_staff=True)
    enrolment = totp_begin(user=user)
    totp_confirm(user=user, factor_id=str(enrolment.factor.pk), code=code_now(enrolment.secret))
    return enrolment.secret


def sign_in_with_code(page: Page, url: str, email: str, secret: str) -> Page:
    """Password, then the next code of the authenticator (each code works once)."""
    page.goto(f"{url}/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    used = Factor.objects.filter(user__username=email, confirmed=True).values_list(
        "last_step", flat=True
    )
    step = max([s for s in used if s is not None], default=int(time.time()) // 30)
    page.get_by_label("Code").fill(code_at_step(secret, step + 1))
    page.get_by_role("button", name="Verify").click()
    return page
