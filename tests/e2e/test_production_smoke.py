"""A deployment as the README's Production section describes it, from an empty database.

Production settings, two database roles on PostgreSQL, Redis, gunicorn, one
Celery worker and one beat, each started with the README's command; then
`tenant_create` invites an owner, who chooses a password through the emailed
link, signs in with Chromium, makes an API token, stores records through
gunicorn, rotates the data key and re-encrypts the older data on the worker.
Only the commands and pages an operator and a customer use are involved: no
test database, no ORM call, no task run in this process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import Browser, Page, expect

from tests.support.dbroles import Roles, database_with_two_roles

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Deployment:
    url: str
    data: Path
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(BIN / "python"), "manage.py", *args],
            cwd=ROOT,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"manage.py {args[0]}: {done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def start(self, name: str, *command: str) -> None:
        with (self.logs / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def api(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(  # noqa: S310 (the deployment's own http URL)
            f"{self.url}/api/v1/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (http on loopback)
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b"null")


def production_env(roles: Roles, data: Path, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KEYWARD_", "DJANGO_", "PYTEST_", "MIGRATE_"))
        and key not in {"DATABASE_URL", "SECRET_KEY"}
    }
    env.update(
        {
            "KEYWARD_MODE": "production",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": roles.url(roles.app),
            "MIGRATE_DATABASE_URL": roles.url(roles.owner),
            "REDIS_URL": str(settings.REDIS_URL),
            "ALLOWED_HOSTS": "127.0.0.1",
            "KEYWARD_INSECURE_HTTP_LOOPBACK": "true",
            "KEYWARD_DATA_DIR": str(data),
            "KEYWARD_STATIC_ROOT": str(data.parent / "staticfiles"),
            "KEYWARD_SITE_URL": f"http://127.0.0.1:{port}",
            # Tasks of this deployment stay on its own queue in the shared Redis.
            "KEYWARD_CELERY_QUEUE": f"smoke-{uuid.uuid4().hex[:8]}",
            "KEYWARD_HEALTH_CHECK_SECONDS": "5",
            "KEYWARD_DEK_RETIRE_GRACE_SECONDS": "0",
        }
    )
    return env


def wait_until(what: str, ready: Any, deployment: Deployment, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        for name, process in deployment.processes.items():
            assert process.poll() is None, f"{name} exited while waiting for {what}"
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def answers_healthz(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310
            return response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    except OSError:
        return False


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    assert settings.REDIS_URL, "the production smoke test needs REDIS_URL"
    port = free_port()
    with database_with_two_roles("kw_smoke") as roles:
        data = tmp_path / "data"
        logs = tmp_path / "logs"
        logs.mkdir()
        deployment = Deployment(
            f"http://127.0.0.1:{port}", data, production_env(roles, data, port), logs
        )
        # The README's steps, in its order.
        deployment.manage("migrate", "--noinput")
        grants = deployment.manage("db_roles_sql", "--app-role", roles.app)
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", roles.url(roles.owner)],
            input=grants,
            text=True,
            check=True,
            capture_output=True,
            timeout=60,
        )
        deployment.manage("collectstatic", "--noinput")
        deployment.start(
            "gunicorn",
            str(BIN / "gunicorn"),
            "console.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
        )
        deployment.start(
            "worker", str(BIN / "celery"), "-A", "console", "worker", "--loglevel", "INFO"
        )
        deployment.start("beat", str(BIN / "celery"), "-A", "console", "beat", "--loglevel", "INFO")
        try:
            wait_until("gunicorn", lambda: answers_healthz(deployment.url), deployment)
            yield deployment
        finally:
            deployment.stop()


def invitation_link(deployment: Deployment) -> str:
    mails = sorted((deployment.data / "mail").glob("*.log"))
    assert mails, "tenant_create sent no invitation"
    text = mails[-1].read_text()
    assert OWNER_EMAIL in text
    link = re.search(re.escape(deployment.url) + r"/t/smoke/members/join/\S+/", text)
    assert link, text
    return link.group(0)


def create_token(page: Page, deployment: Deployment) -> str:
    page.goto(f"{deployment.url}/t/smoke/data/")
    form = page.get_by_test_id("token-form")
    form.get_by_label("Name").fill("smoke test")
    for scope in ("records:read", "records:write"):
        form.locator(f'input[name="scopes"][value="{scope}"]').check()
    page.get_by_test_id("create-token").click()
    return str(page.get_by_test_id("token-text").inner_text(timeout=15_000)).strip()


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

    token = create_token(page, deployment)
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
