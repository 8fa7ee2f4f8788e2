"""A deployment as the README's Production section describes it, from an empty database.

Production settings, two database roles on PostgreSQL, Redis, gunicorn, one
Celery worker and one beat, each started with the README's command; then
`tenant_create` invites an owner, who chooses a password through the emailed
link, signs in with Chromium, sets up an authenticator app (a new tenant asks
for a second factor before keys change), makes an API token, stores records through
gunicorn, rotates the data key and re-encrypts the older data on the worker.
Only the commands and pages an operator and a customer use are involved: no
test database, no ORM call, no task run in this process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.mfa_helpers import code_now
from tests.support.deployment import Deployment, production_deployment, wait_until

pytestmark = [pytest.mark.e2e]

OWNER_EMAIL = "alice@smoke.example"
OWNER_PASSWORD = "quartz ferry meadow 57"
RECORDS = [
    {"kind": "user", "external_id": f"u-{n}", "fields": {"email": f"user{n}@smoke.example"}}
    for n in range(1, 6)
]


# keyward.W001 names the switch; Django's own checks name what it turns off.
LOOPBACK_WARNINGS = {
    "keyward.W001",
    "security.W004",
    "security.W008",
    "security.W012",
    "security.W016",
}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with production_deployment(tmp_path) as made:
        yield made


def invitation_link(deployment: Deployment) -> str:
    mails = sorted((deployment.data / "mail").glob("*.log"))
    assert mails, "tenant_create sent no invitation"
    text = mails[-1].read_text()
    assert OWNER_EMAIL in text
    link = re.search(re.escape(deployment.url) + r"/t/smoke/members/join/\S+/", text)
    assert link, text
    return link.group(0)


def fill_token_form(page: Page, deployment: Deployment) -> None:
    page.goto(f"{deployment.url}/t/smoke/data/")
    form = page.get_by_test_id("token-form")
    form.get_by_label("Name").fill("smoke test")
    for scope in ("records:read", "records:write"):
        form.locator(f'input[name="scopes"][value="{scope}"]').check()
    page.get_by_test_id("create-token").click()


def enrol_authenticator(page: Page) -> None:
    """A new tenant asks for a second factor before keys change: the owner sets one up."""
    expect(page.get_by_role("heading", name="Set up a second factor first")).to_be_visible()
    page.get_by_role("link", name="Set up an authenticator app").click()
    secret = page.get_by_test_id("totp-secret").inner_text()
    page.get_by_label("Code from the app").fill(code_now(secret))
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    page.get_by_role("link", name="I have saved them").click()


def test_an_operator_deploys_and_the_first_owner_reencrypts_through_the_worker(
    deployment: Deployment, browser: Browser, page: Page
) -> None:
    # Clean with the production settings as they will be served; the loopback
    # switch this test needs for plain HTTP is reported, with what it turns off.
    served = {**deployment.env, "KEYWARD_INSECURE_HTTP_LOOPBACK": "false"}
    assert "no issues" in deployment.manage("check", "--deploy", env=served)
    checked = deployment.manage("check", "--deploy")
    assert set(re.findall(r"\(([\w.]+\.[WE]\d+)\)", checked)) == LOOPBACK_WARNINGS, checked

    out = deployment.manage(
        "tenant_create", "--name", "Smoke Corp", "--slug", "smoke", "--owner", OWNER_EMAIL
    )
    assert "smoke" in out
    link = invitation_link(deployment)

    # The owner chooses a password through the link, in a browser of their own.
    joining = browser.new_context()
    try:
        guest = joining.new_page()
        guest.goto(link)
        expect(guest.get_by_role("heading", name="Join Smoke Corp")).to_be_visible()
        guest.get_by_label("Choose a password").fill(OWNER_PASSWORD)
        guest.get_by_label("Repeat it").fill(OWNER_PASSWORD)
        guest.get_by_role("button", name="Set password and join").click()
        expect(guest.get_by_role("heading", name="Smoke Corp")).to_be_visible()
        guest.goto(link)
        expect(guest.get_by_role("alert")).to_have_text("This invitation has been used already.")
    finally:
        joining.close()

    # Then signs in from another browser with the password just chosen.
    page.goto(f"{deployment.url}/login/")
    page.get_by_label("Email").fill(OWNER_EMAIL)
    page.get_by_label("Password").fill(OWNER_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Smoke Corp")).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["sessionid"]["httpOnly"] and not cookies["sessionid"]["secure"]

    # Making a token is a key-changing action: the new tenant wants a second
    # factor for it, so the owner sets up an authenticator app, then acts again.
    fill_token_form(page, deployment)
    enrol_authenticator(page)
    fill_token_form(page, deployment)
    token = page.get_by_test_id("token-text").inner_text().strip()
    assert token.startswith("kw_")
    stored = []
    for record in RECORDS:
        status, body = deployment.api("POST", "records", token, record)
        assert status == 201, body
        stored.append(body)

    page.goto(f"{deployment.url}/t/smoke/keys/")
    page.get_by_test_id("rotate-dek").click()
    expect(page.get_by_role("status")).to_contain_text("New data key v2 is in use")
    page.get_by_test_id("reencrypt").click()
    # Served by gunicorn from collectstatic's files, htmx polls the job's progress.
    expect(page.locator("#reencrypt-progress")).to_contain_text(
        f"Re-encryption done: {len(RECORDS)} of {len(RECORDS)} records", timeout=90_000
    )
    page.reload()
    expect(page.get_by_test_id("dek-table")).to_contain_text("Retired")

    for body in stored:
        status, read = deployment.api("GET", f"records/{body['id']}", token)
        assert (status, read) == (200, body)

    # Beat runs the health round on its schedule, the worker runs it, and
    # beat's state is kept under the data directory.
    wait_until(
        "a health round sent by beat",
        lambda: re.search(
            r"Task keys\.check_key_health\[\S+\] succeeded", deployment.log("worker")
        ),
        deployment,
    )
    assert list(deployment.data.glob("celerybeat-schedule*"))
    assert "records.run_reencryption" in deployment.log("worker")
    assert "Traceback" not in deployment.log("gunicorn") + deployment.log("worker")
    verified = deployment.manage("audit_verify")
    assert "ok" in verified and "BROKEN" not in verified, verified
