"""Start a real Celery worker process against the test database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def worker_database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@dataclass
class Worker:
    queue: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the worker and its children: a crash, with no chance to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def celery_worker(
    log_path: Path, extra_env: dict[str, str] | None = None, queue: str | None = None
) -> Iterator[Worker]:
    """Run a worker on a queue of its own (or on `queue`, shared with other workers);
    stop it (gently) afterwards."""
    assert settings.REDIS_URL, "the worker tests need REDIS_URL"
    queue = queue or f"test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "KEYWARD_MODE": "embedded",
        "KEYWARD_DEK_RETIRE_GRACE_SECONDS": "0",
        "KEYWARD_CELERY_QUEUE": queue,  # what its tasks send goes to itself
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "console", "worker",
                "--pool", "solo", "--queues", queue, "--loglevel", "INFO",
                "--hostname", f"{log_path.stem}-{queue}@%h", "--without-mingle", "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield Worker(queue, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
