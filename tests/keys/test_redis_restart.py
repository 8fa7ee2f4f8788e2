"""Redis really restarted: a revoke is never forgotten, the broker comes back, tasks run once.

Every process reads each tenant's key state (epoch, current DEK, status) from
Redis, which holds a copy of what the database says (keys/runtime.py). A
Redis that restarts empty loses that copy, which is harmless: a missing entry
is read from the database again. One that restarts with persistence comes
back with its last snapshot, older than what it held: a revoke published
after that snapshot, or while Redis was down, is missing from it, and a
process that trusted it would decrypt again. These tests start a redis-server
of their own (the suite's is shared with every other test and must never be
restarted), kill it and start it again on the same port, around a revoke
made while it runs, while it is down and just before it restarts, and check
that another process denies the tenant's data within a second of the revoke
and never decrypts again after Redis returns.

The broker: a real worker whose broker is the private Redis takes a task
sent before the restart (it is running when Redis is killed) and one sent
after it; each has its effect once, and a task delivered again (as a
restored snapshot redelivers an unacknowledged message) changes nothing.
A worker whose broker does not come back exits, for its supervisor to start
a fresh one, rather than stay up without taking tasks.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django.db import transaction
from django.db.models import F

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, DekState
from keys.runtime import publish_key_state, reset_for_tests
from keys.services.deks import dek_rotate
from records.models import JobState, ReencryptionJob, SealedFields
from records.reencryption import RUN_REENCRYPTION
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.support.faults import scale, seeded
from tests.support.restartable import PrivateRedis, private_redis
from tests.support.worker import (
    ROOT,
    Supervised,
    celery_worker,
    supervised_worker,
    worker_database_url,
)

pytestmark = pytest.mark.faults

SYSTEM = Actor.system("tests")
ROUNDS = scale(1, 4)  # restarts per way of restarting
BROKER_RESTARTS = scale(1, 6)
RECORDS = 500
REVOKE_BOUND = 1.0  # seconds: DESIGN.md, "an explicit revoke empties every process's cache"
WATCH = 2.0  # seconds after Redis is back during which nothing may decrypt


@pytest.fixture
def redis_server(settings: Any) -> Iterator[PrivateRedis]:
    with private_redis() as server:
        settings.REDIS_URL = server.url()
        reset_for_tests()
        yield server
        reset_for_tests()


class DecryptLoop:
    """Another process decrypting one record every 20 ms, its answers with their times."""

    def __init__(self, slug: str, uid: str, redis_url: str) -> None:
        env = {**os.environ, "DATABASE_URL": worker_database_url(), "REDIS_URL": redis_url}
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/support/decrypt_loop.py"), slug, uid, "0.02",
             "keep"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[str, float]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, when, *_ = line.split()
            self.lines.put((kind, float(when)))

    def next(self, timeout: float = 10.0) -> tuple[str, float]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            stderr = ""
            if self.process.poll() is not None and self.process.stderr is not None:
                stderr = self.process.stderr.read()
            raise AssertionError(f"the decrypting process went quiet: {stderr}") from None

    def wait_for(self, kind: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got, when = self.next(timeout=max(deadline - time.monotonic(), 0.1))
            if got == kind:
                return when
        raise AssertionError(f"no {kind} within {timeout} s")

    def all_denied_for(self, seconds: float) -> int:
        """Every answer for `seconds` is a denial; how many there were."""
        deadline = time.time() + seconds
        answers = 0
        while time.time() < deadline:
            kind, when = self.next()
            assert kind == "denied", f"decrypted again {when - deadline + seconds:.2f} s in"
            answers += 1
        return answers

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def set_key_state(tenant: Tenant, state: str) -> float:
    """Change the tenant's state with an epoch bump and publish it, as a revoke does.

    Returns the time it committed.
    """
    with transaction.atomic():
        Tenant.objects.filter(pk=tenant.pk).update(state=state, key_epoch=F("key_epoch") + 1)
        publish_key_state(str(tenant.pk))  # after commit; Redis down: logged, not raised
    return time.time()


WAYS = (
    "revoked while down, back empty",
    "revoked while down, back from its snapshot",
    "revoked just before a restart from its snapshot",
)


@pytest.mark.django_db(transaction=True)
def test_a_revoke_is_never_forgotten_across_redis_restarts(redis_server: PrivateRedis) -> None:
    """One decrypting process throughout (starting one takes seconds), each way in turn."""
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    record = records_create(tenant=tenant, items=list(synthetic_records(1)))[0]
    loop = DecryptLoop("initech", str(record.uid), redis_server.url())
    survived: dict[str, int] = {}
    try:
        loop.wait_for("ok", timeout=60)
        for way in WAYS * ROUNDS:
            for _ in range(5):  # its state and DEK are cached, from Redis
                assert loop.next()[0] == "ok", way
            if way == "revoked just before a restart from its snapshot":
                redis_server.snapshot()  # holds the tenant active
                revoked = set_key_state(tenant, ServiceState.REVOKED)
                assert loop.wait_for("denied") - revoked < REVOKE_BOUND, way
                redis_server.restart(empty=False)  # back with the tenant active
            else:
                if way.endswith("snapshot"):
                    redis_server.snapshot()
                redis_server.stop()
                revoked = set_key_state(tenant, ServiceState.REVOKED)
                assert loop.wait_for("denied") - revoked < REVOKE_BOUND, way
                redis_server.restart(empty=way.endswith("empty"))
            assert loop.all_denied_for(WATCH) > 10, way
            survived[way] = survived.get(way, 0) + 1
            set_key_state(tenant, ServiceState.VENDOR_MANAGED)  # restored, for the next round
            loop.wait_for("ok")
    finally:
        loop.stop()
    print(f"Redis restarts with a revoke held through each: {survived}")


@pytest.mark.django_db(transaction=True)
def test_the_broker_comes_back_and_tasks_take_effect_once(
    redis_server: PrivateRedis, tmp_path: Path
) -> None:
    rng = seeded("Celery broker across Redis restarts")
    tenant = tenant_create(name="Globex", slug="globex", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(RECORDS)))

    def new_job() -> ReencryptionJob:
        dek_rotate(tenant=tenant, actor=SYSTEM, reason="tests")
        target = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
        return ReencryptionJob.objects.create(tenant=tenant, target_dek=target, total=RECORDS)

    def send(job: ReencryptionJob, queue_name: str) -> None:
        with current_app.connection_for_write(redis_server.url()) as conn:
            current_app.send_task(
                RUN_REENCRYPTION, args=[str(job.pk)], queue=queue_name, connection=conn
            )

    def finished(job: ReencryptionJob, worker: Supervised, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.check()
            job.refresh_from_db()
            if job.state in (JobState.DONE, JobState.FAILED):
                break
            time.sleep(0.05)
        assert job.state == JobState.DONE, job.error or worker.logs()
        assert job.done == RECORDS  # each record re-encrypted once
        under = SealedFields.objects.filter(record__tenant=tenant, dek=job.target_dek)
        assert under.count() == RECORDS

    log = tmp_path / "worker.log"
    jobs: list[ReencryptionJob] = []
    in_flight = 0
    # Supervised: Celery's consumer can fail inside its own reconnect (kombu's
    # Redis channel closing after its transport was dropped, celery/celery#10205)
    # and the worker then exits with status 1; the supervisor starts it again.
    # A worker that stays up without taking tasks still fails the test.
    with supervised_worker(
        log, {"REDIS_URL": redis_server.url(), "KEYWARD_REENCRYPT_BATCH": "100"}
    ) as worker:
        for _ in range(BROKER_RESTARTS):
            running = new_job()
            send(running, worker.queue)
            deadline = time.monotonic() + 60
            while running.done == 0 and running.state != JobState.DONE:
                assert time.monotonic() < deadline, worker.logs()
                worker.check()
                time.sleep(0.002)
                running.refresh_from_db()
            in_flight += running.state == JobState.RUNNING
            # Killed under the running task (its worker reads key state from the
            # database meanwhile), back empty or from a snapshot taken just now.
            empty = rng.random() < 0.5
            if not empty:
                redis_server.snapshot()
            redis_server.restart(empty=empty, down_for=rng.random() * 2)
            # A Redis back empty lost the parts still queued; beat's
            # records.resume_reencryptions sends the job again (after ten
            # minutes), sent here at once. From a snapshot it changes nothing.
            send(running, worker.queue)
            finished(running, worker)
            # Sent after the restart: taken only if the worker reconnected.
            after = new_job()
            send(after, worker.queue)
            finished(after, worker)
            jobs += [running, after]
        # A message delivered twice (a snapshot restores what was not yet
        # acknowledged when it was taken) must change nothing the second time.
        send(jobs[-1], worker.queue)
        marker = new_job()
        send(marker, worker.queue)  # the worker takes messages in order
        finished(marker, worker)
        jobs.append(marker)
    # Only the exit of a consumer that failed in its reconnect, never a crash.
    assert all(status == 1 for status in worker.exits), worker.exits
    for job in jobs:
        done_events = AuditEvent.objects.filter(
            tenant=tenant, action="records.reencrypt.done", target=f"DEK v{job.target_dek.version}"
        )
        assert done_events.count() == 1, job.target_dek.version
    print(
        f"broker: {redis_server.restarts} Redis restarts ({in_flight} under a running task), "
        f"{len(jobs)} tasks each with its effect once, worker exits {worker.exits}"
    )


def test_a_worker_without_its_broker_for_too_long_exits(tmp_path: Path) -> None:
    """The watchdog (console/celery.py): Redis gone for good, the worker ends itself."""
    limit = 5
    log = tmp_path / "worker.log"
    with (
        private_redis() as server,
        celery_worker(
            log,
            {"REDIS_URL": server.url(), "KEYWARD_WORKER_BROKER_LOST_EXIT_SECONDS": str(limit)},
        ) as worker,
    ):
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert worker.process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(limit + 1)  # connected all along: the watchdog stays quiet
        assert worker.process.poll() is None, log.read_text()[-3000:]
        server.stop()
        gone = time.monotonic()
        try:
            status = worker.process.wait(timeout=limit + 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker still runs without its broker: {log.read_text()[-3000:]}"
            ) from None
        waited = time.monotonic() - gone
    assert status == 1, log.read_text()[-3000:]
    assert limit <= waited < limit + 30
    assert "no broker connection for" in log.read_text()
