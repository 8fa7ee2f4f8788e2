"""Real Celery workers killed (SIGKILL) in the middle of delivering the audit trail.

globex streams to rsyslog over TLS: the first worker is killed while it is
sending a batch (rsyslog is stopped under it). acme streams to the HTTPS
receiver: the second worker is killed while the receiver holds a batch it
has read but not answered. Delivery then resumes from each cursor. Every event
arrives, in order, none missing; the only duplicates are the events of the
batch that was cut, recognisable by their ids.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, transaction

from audit.models import AuditEvent, StreamDestination
from audit.services import Actor, chain_key, record
from audit.streaming.delivery import stream_deliver
from audit.streaming.services import stream_configure
from audit.streaming.tasks import deliver
from tests.conftest import TenantUsers
from tests.servers.siem import Rsyslog, WebhookReceiver
from tests.support.worker import celery_worker

SYSTEM = Actor.system("tests")
WORKER_ENV = {
    "KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
    "KEYWARD_AUDIT_STREAM_BATCH_SIZE": "5",
    "KEYWARD_AUDIT_STREAM_TIMEOUT_SECONDS": "20",
}


def add_events(tenant: Any, count: int) -> None:
    for i in range(count):
        record(tenant=tenant, actor=SYSTEM, action="key.test", target=f"event {i}")


def trail_ids(tenant: Any) -> list[str]:
    events = AuditEvent.objects.filter(chain=chain_key(tenant)).order_by("seq")
    return [str(pk) for pk in events.values_list("id", flat=True)]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 40) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def delivered_all(destination: StreamDestination) -> Callable[[], bool]:
    def check() -> bool:
        destination.refresh_from_db()
        events = AuditEvent.objects.filter(chain=chain_key(destination.tenant))
        return destination.cursor == events.count()

    return check


def released(destination: StreamDestination) -> Callable[[], bool]:
    """The destination's row lock is free again.

    A killed worker's PostgreSQL session holds the lock it took until the server
    reads the closed socket and ends the session, a moment after the kill. Until
    then stream_deliver skips the row (SKIP LOCKED) and sends nothing, as a
    restarted worker would; the next run delivers.
    """

    def check() -> bool:
        try:
            with transaction.atomic():
                rows = StreamDestination.objects.select_for_update(nowait=True)
                list(rows.filter(pk=destination.pk).values_list("pk", flat=True))
        except OperationalError:
            return False
        return True

    return check


def check_received(received: list[str], expected: list[str], cut: list[str]) -> None:
    """In order, none missing; repeated only: the cut batch, once, right after itself."""
    first_seen = list(dict.fromkeys(received))
    assert first_seen == expected
    repeated = [i for n, i in enumerate(received) if i in received[:n]]
    assert repeated == [i for i in cut if received.count(i) > 1]
    if repeated:
        start = received.index(repeated[0])
        end = start + len(cut)
        assert received[start:end] == cut
        assert received[end : end + len(repeated)] == repeated


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_killed_workers_lose_nothing_and_keep_the_order(
    acme: TenantUsers,
    globex: TenantUsers,
    rsyslog: Rsyslog,
    webhook: WebhookReceiver,
    allow_loopback: None,
    tmp_path: Path,
) -> None:
    stream_configure(
        tenant=globex.tenant,
        actor=SYSTEM,
        kind="syslog",
        host="127.0.0.1",
        port=rsyslog.port,
        ca_pem=rsyslog.certs.ca_pem,
    )
    syslog_to = StreamDestination.objects.get(tenant=globex.tenant)
    secret = stream_configure(
        tenant=acme.tenant,
        actor=SYSTEM,
        kind="webhook",
        url=webhook.url,
        ca_pem=webhook.certs.ca_pem,
    )
    assert secret is not None
    webhook.secret = secret.encode()
    webhook_to = StreamDestination.objects.get(tenant=acme.tenant)
    add_events(globex.tenant, 12)
    add_events(acme.tenant, 30)
    webhook.hold_request = 3

    # 1. globex's first events reach rsyslog; then rsyslog stops answering, and the
    #    worker is killed in the middle of sending the next batch.
    with celery_worker(tmp_path / "worker-1.log", WORKER_ENV) as worker:
        deliver.apply_async(args=(str(syslog_to.pk),), queue=worker.queue)
        wait_for(delivered_all(syslog_to), "globex's first events")
        add_events(globex.tenant, 13)
        assert rsyslog.process is not None
        os.kill(rsyslog.process.pid, signal.SIGSTOP)
        try:
            deliver.apply_async(args=(str(syslog_to.pk),), queue=worker.queue)
            time.sleep(1)  # the worker connects and waits on the stopped server
            worker.kill()
        finally:
            os.kill(rsyslog.process.pid, signal.SIGCONT)
    wait_for(released(syslog_to), "the killed worker's lock on globex's destination")
    syslog_to.refresh_from_db()
    cut_at = syslog_to.cursor
    assert 0 < cut_at < len(trail_ids(globex.tenant)), "the kill was not mid-delivery"
    log = (tmp_path / "worker-1.log").read_text()
    assert log.count("audit.stream_deliver[") >= 3  # two received, one of them done
    assert log.count("succeeded in") == 1, "the second delivery was not under way"

    # 2. Delivery resumes from the cursor (here in this process, as a fresh worker would).
    assert stream_deliver(str(syslog_to.pk)) == len(trail_ids(globex.tenant)) - cut_at

    # 3. acme: the worker is killed while the receiver holds its third batch.
    with celery_worker(tmp_path / "worker-2.log", WORKER_ENV) as worker:
        deliver.apply_async(args=(str(webhook_to.pk),), queue=worker.queue)
        assert webhook.held.wait(40), "the third webhook batch never came"
        worker.kill()
        webhook.release.set()
    wait_for(released(webhook_to), "the killed worker's lock on acme's destination")
    webhook_to.refresh_from_db()
    assert webhook_to.cursor == 10  # two batches of five acknowledged
    assert stream_deliver(str(webhook_to.pk)) == len(trail_ids(acme.tenant)) - 10

    expected = trail_ids(globex.tenant)
    lines = [line for line in rsyslog.lines() if line.event["id"] in set(expected)]
    # rsyslog never read the batch it was stopped in: nothing twice.
    check_received([line.event["id"] for line in lines], expected, cut=[])
    assert [line.event["seq"] for line in lines] == list(range(1, len(expected) + 1))

    held = [e["id"] for e in webhook.deliveries[2].events]
    received = [e["id"] for e in webhook.events()]
    assert len(received) == len(trail_ids(acme.tenant)) + len(held)
    check_received(received, trail_ids(acme.tenant), cut=held)
    assert all(d.verified for d in webhook.deliveries)
