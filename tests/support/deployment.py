"""A deployment of Keyward as the README's Production section describes it.

Two database roles on a fresh PostgreSQL database, `migrate`, the grants,
`collectstatic`, then gunicorn, a Celery worker and beat, each started with the
README's command and production settings. Plain HTTP on loopback
(`KEYWARD_INSECURE_HTTP_LOOPBACK`), Redis shared with the suite, tasks on a
queue of their own.
"""

from __future__ import annotations

import json
import os
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from tests.support.dbroles import Roles, database_with_two_roles

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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
    roles: Roles
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
            "KEYWARD_CELERY_QUEUE": f"deployment-{uuid.uuid4().hex[:8]}",
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


@contextmanager
def production_deployment(
    folder: Path, *, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[Deployment]:
    """A deployment as the README's Production section makes it, torn down afterwards."""
    assert settings.REDIS_URL, "a production deployment needs REDIS_URL"
    port = free_port()
    with database_with_two_roles("kw_prod") as roles:
        data = folder / "data"
        logs = folder / "logs"
        logs.mkdir()
        deployment = Deployment(
            f"http://127.0.0.1:{port}",
            data,
            {**production_env(roles, data, port), **(env or {})},
            logs,
            roles,
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
            str(workers),
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
