"""Start a real Celery worker process against the test database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


class Supervised:
    """A worker started again whenever it exits, as the deployment's supervisor does
    (README: systemd `Restart=always`). Each run logs to a file of its own."""

    def __init__(self, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.extra_env = extra_env
        self.stack = ExitStack()
        self.exits: list[int] = []
        self.worker = self._start()

    def _start(self) -> Worker:
        log = self.log_path.with_name(f"{self.log_path.stem}-{len(self.exits)}.log")
        queue = self.worker.queue if self.exits else None
        return self.stack.enter_context(celery_worker(log, self.extra_env, queue=queue))

    @property
    def queue(self) -> str:
        return self.worker.queue

    def check(self) -> None:
        status = self.worker.process.poll()
        if status is not None:
            self.exits.append(status)
            self.worker = self._start()

    def logs(self, tail: int = 3000) -> str:
        runs = sorted(self.log_path.parent.glob(f"{self.log_path.stem}-*.log"))
        return "\n".join(f"{run.name}: {run.read_text()[-tail:]}" for run in runs)

    def close(self) -> None:
        self.stack.close()


@contextmanager
def supervised_worker(
    log_path: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Supervised]:
    supervised = Supervised(log_path, extra_env)
    try:
        yield supervised
    finally:
        supervised.close()
