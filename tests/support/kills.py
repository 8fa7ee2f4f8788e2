"""Kill a real process (SIGKILL, its whole process group) at random points of a long job.

The pattern every SIGKILL test follows (`kill_repeatedly`):
1. Marks are drawn from a seeded random source (tests/support/faults.py) over
   the job's progress, a number the job's own rows show (DEKs moved, records
   indexed, tenants destroyed...).
2. For each mark a fresh process is started and the job sent to it (the first
   time as the service sends it, afterwards as the beat's resume job does);
   once the progress passed the mark, and at least one more unit of work was
   done by this process, it is killed after a random few milliseconds, so the
   kill lands anywhere inside a unit of work.
3. After each kill the caller's check runs (what must hold at any instant).
4. A last process finishes the job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.worker import ROOT, Worker, celery_worker, worker_database_url

POLL_SECONDS = 0.005


@dataclass
class Command:
    """A `manage.py` command run as its own process group (a job with no Celery task)."""

    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def manage_command(
    log_path: Path, args: Sequence[str], extra_env: dict[str, str]
) -> Iterator[Command]:
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "KEYWARD_MODE": "embedded",
        **extra_env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Command(process)
    finally:
        try:
            process.wait(timeout=60)  # a run not killed ends by itself
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Killable(Protocol):
    def kill(self) -> None: ...


@dataclass
class Job:
    """How to run the job in a process: `start` boots one (a context that stops
    it), `send` gives it the job (first run, or resumed). A worker boots and
    waits (`warm`), so the next one is booted while the current one works; a
    command runs the job as soon as it starts."""

    start: Callable[[Path], AbstractContextManager[Any]]
    send: Callable[[Any, bool], object]
    warm: bool


def task_on_worker(
    env: dict[str, str], first: Callable[[Worker], object], resume: Callable[[Worker], object]
) -> Job:
    """A fresh worker per run: the job sent as the service sends it, then as the
    beat's resume job does."""
    return Job(
        start=lambda path: celery_worker(path, env),
        send=lambda worker, is_first: (first if is_first else resume)(worker),
        warm=True,
    )


def command_runs(args: Sequence[str], env: dict[str, str]) -> Job:
    """`manage.py <args>` per run: the job run again is the resume."""
    return Job(start=lambda path: manage_command(path, args, env), send=lambda *_: None, warm=False)


def spread_marks(rng: random.Random, kills: int, low: int, high: int) -> list[int]:
    """`kills` increasing marks in [low, high): one in each equal slice, so the
    kills cover the whole job however many there are."""
    assert high - low >= kills, "too little work for that many kills: make the job bigger"
    width = (high - low) / kills
    return [int(low + width * n + rng.random() * width) for n in range(kills)]


@dataclass
class KillLog:
    """Where each kill landed (progress when killed), for the report and the asserts."""

    name: str
    landed: list[int] = field(default_factory=list)
    total: int = 0

    def report(self) -> str:
        text = f"{self.name}: {len(self.landed)} kills at progress {self.landed} of {self.total}"
        print(text)
        return text


def wait_until(done: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{what} did not happen within {seconds:.0f} s\n{tail}")
        time.sleep(0.05)


def kill_repeatedly(
    tmp_path: Path,
    rng: random.Random,
    *,
    name: str,
    marks: Sequence[int],
    total: int,
    job: Job,
    progress: Callable[[], int],
    finished: Callable[[], bool],
    after_kill: Callable[[], None] = lambda: None,
    timeout: float = 90,
) -> KillLog:
    """Run a job in real processes, SIGKILL one at each mark, then let a last one finish."""
    log = KillLog(name, total=total)
    reached = progress()
    with ExitStack() as stack:

        def started(label: str) -> Any:
            return stack.enter_context(job.start(tmp_path / f"{name}-{label}.log"))

        ready = started("0") if job.warm else None
        for n, mark in enumerate(marks):
            label = str(n)
            if ready is not None:
                process, ready = ready, started(str(n + 1))  # boots while this one works
            else:
                process = started(label)
            job.send(process, n == 0)
            goal = max(mark, reached + 1)
            deadline = time.monotonic() + timeout
            while progress() < goal and not finished():
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{name}: no progress to {goal} in {timeout:.0f} s\n"
                        + (tmp_path / f"{name}-{label}.log").read_text(errors="replace")[-3000:]
                    )
                time.sleep(POLL_SECONDS)
            time.sleep(rng.random() * 0.02)  # anywhere inside the next unit of work
            process.kill()
            assert not finished(), (
                f"{name}: killed after the job ended: lower the marks or add work"
            )
            reached = progress()
            log.landed.append(reached)
            after_kill()
        label = str(len(marks))
        process = ready if ready is not None else started(label)
        job.send(process, not marks)
        wait_until(finished, timeout, f"{name} finishing after {len(marks)} kills",
                   tmp_path / f"{name}-{label}.log")  # fmt: skip
    return log
