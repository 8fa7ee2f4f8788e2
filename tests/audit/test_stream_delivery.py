"""Delivering the audit trail to a real rsyslog (TLS) and to an HTTPS receiver."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.db import connections, transaction
from django.urls import reverse
from django.utils import timezone

from audit.export import event_row
from audit.models import AuditEvent, StreamDestination, StreamState
from audit.services import Actor, chain_key, record
from audit.streaming.delivery import due_destinations, stream_deliver
from audit.streaming.services import stream_configure
from audit.streaming.transport import SD_ID
from tests.conftest import TenantUsers, login
from tests.servers.siem import Rsyslog, WebhookReceiver

SYSTEM = Actor.system("tests")


def add_events(tenant: Any, count: int) -> None:
    for i in range(count):
        record(tenant=tenant, actor=SYSTEM, action="key.test", target=f"event {i}")


def trail(tenant: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain_key(tenant)).order_by("seq"))


def to_webhook(tenant: Any, receiver: WebhookReceiver) -> StreamDestination:
    secret = stream_configure(
        tenant=tenant, actor=SYSTEM, kind="webhook", url=receiver.url, ca_pem=receiver.certs.ca_pem
    )
    assert secret is not None
    receiver.secret = secret.encode()
    return StreamDestination.objects.get(tenant=tenant)


def to_syslog(tenant: Any, server: Rsyslog) -> StreamDestination:
    stream_configure(
        tenant=tenant,
        actor=SYSTEM,
        kind="syslog",
        host="127.0.0.1",
        port=server.port,
        ca_pem=server.certs.ca_pem,
    )
    return StreamDestination.objects.get(tenant=tenant)


def fresh(destination: StreamDestination) -> StreamDestination:
    destination.refresh_from_db()
    return destination


def test_syslog_gets_every_event_in_order_as_rfc5424(
    acme: TenantUsers, rsyslog: Rsyslog, allow_loopback: None, settings: Any
) -> None:
    settings.KEYWARD_AUDIT_STREAM_BATCH_SIZE = 7
    destination = to_syslog(acme.tenant, rsyslog)
    add_events(acme.tenant, 20)
    events = trail(acme.tenant)

    assert stream_deliver(str(destination.pk)) == len(events)

    assert fresh(destination).cursor == events[-1].seq
    ids = {str(e.id) for e in events}
    lines = [line for line in rsyslog.lines() if line.event["id"] in ids]
    assert [line.event["seq"] for line in lines] == [e.seq for e in events]
    for line, event in zip(lines, events, strict=True):
        assert line.app == "keyward"
        assert line.msgid == event.action
        assert line.structured.startswith(f'[{SD_ID} id="{event.id}" seq="{event.seq}"')
        assert line.event == {"id": str(event.id), "tenant": "acme", **event_row(event)}
    # Nothing left: a second run sends nothing.
    assert stream_deliver(str(destination.pk)) == 0


def test_webhook_batches_are_signed_and_in_order(
    acme: TenantUsers, webhook: WebhookReceiver, allow_loopback: None, settings: Any
) -> None:
    settings.KEYWARD_AUDIT_STREAM_BATCH_SIZE = 4
    destination = to_webhook(acme.tenant, webhook)
    add_events(acme.tenant, 9)
    events = trail(acme.tenant)

    assert stream_deliver(str(destination.pk)) == len(events)

    assert all(d.verified for d in webhook.deliveries)
    assert [len(d.events) for d in webhook.deliveries][:-1] == [4] * (len(webhook.deliveries) - 1)
    for delivery in webhook.deliveries:
        ids = [e["id"] for e in delivery.events]
        assert delivery.headers["x-keyward-event-ids"] == ",".join(ids)
        seqs = [e["seq"] for e in delivery.events]
        assert delivery.headers["x-keyward-seq"] == f"{seqs[0]}-{seqs[-1]}"
        assert delivery.headers["content-type"] == "application/json"
    assert webhook.events() == [{"id": str(e.id), "tenant": "acme", **event_row(e)} for e in events]
    assert fresh(destination).cursor == events[-1].seq
    assert fresh(destination).last_delivered_at is not None


def test_a_receiver_that_refuses_the_signature_is_retried_with_backoff(
    acme: TenantUsers, webhook: WebhookReceiver, allow_loopback: None, settings: Any
) -> None:
    settings.KEYWARD_AUDIT_STREAM_BACKOFF_MAX_SECONDS = 300
    destination = to_webhook(acme.tenant, webhook)
    webhook.secret = b"kwhs_not-the-secret"
    before = timezone.now()

    assert stream_deliver(str(destination.pk)) == 0

    assert [d.verified for d in webhook.deliveries] == [False]
    destination = fresh(destination)
    assert destination.cursor == 0
    assert destination.failures == 1
    assert "401" in destination.last_error
    # 2^1 s with jitter: between 1 and 2 seconds from the failure.
    assert destination.next_attempt_at is not None
    wait = (destination.next_attempt_at - before).total_seconds()
    assert 0.9 <= wait <= 2.5
    # Not due yet: neither a run nor beat's round touches it.
    assert stream_deliver(str(destination.pk)) == 0
    assert len(webhook.deliveries) == 1
    assert str(destination.pk) not in due_destinations()


def test_the_certificate_is_always_verified(
    acme: TenantUsers, webhook: WebhookReceiver, allow_loopback: None
) -> None:
    destination = to_webhook(acme.tenant, webhook)
    destination.ca_pem = ""  # the system's trust store, which does not know the test CA
    destination.save()
    assert stream_deliver(str(destination.pk)) == 0
    assert "CERTIFICATE_VERIFY_FAILED" in fresh(destination).last_error
    assert webhook.deliveries == []


def test_addresses_are_checked_again_at_delivery(
    acme: TenantUsers, webhook: WebhookReceiver, allow_loopback: None, settings: Any
) -> None:
    destination = to_webhook(acme.tenant, webhook)
    # The operator withdraws the allowance (or the name now resolves elsewhere).
    settings.KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS = []
    assert stream_deliver(str(destination.pk)) == 0
    assert "a loopback address" in fresh(destination).last_error
    assert webhook.deliveries == []


def test_a_destination_that_keeps_failing_is_paused_then_resumes_where_it_stopped(
    acme: TenantUsers,
    webhook: WebhookReceiver,
    allow_loopback: None,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.KEYWARD_AUDIT_STREAM_BACKOFF_MAX_SECONDS = 0  # retry at once
    settings.KEYWARD_AUDIT_STREAM_PAUSE_AFTER_FAILURES = 3
    settings.KEYWARD_AUDIT_STREAM_BATCH_SIZE = 5
    destination = to_webhook(acme.tenant, webhook)
    add_events(acme.tenant, 3)
    assert stream_deliver(str(destination.pk)) > 0
    delivered = fresh(destination).cursor
    add_events(acme.tenant, 4)
    webhook.status = 503
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            assert stream_deliver(str(destination.pk)) == 0

    destination = fresh(destination)
    assert destination.state == StreamState.PAUSED
    assert destination.cursor == delivered
    assert "503" in destination.last_error
    (pause,) = AuditEvent.objects.filter(action="audit.stream_pause")
    assert pause.outcome == "failure" and pause.details["failures"] == 3
    # The owners, and only they, are told.
    (message,) = mail.outbox
    assert message.to == ["owner@acme.test"]
    assert "audit streaming is paused" in message.subject
    assert f"from #{delivered + 1} on" in message.body
    # Every page of the tenant says so, to whoever reads it.
    page = login(acme.viewer).get(reverse("console:dashboard", args=["acme"])).content.decode()
    assert 'data-testid="stream-banner"' in page
    assert f"resumes from event #{delivered + 1}" in page
    # While paused, nothing is sent.
    sent = len(webhook.deliveries)
    assert stream_deliver(str(destination.pk)) == 0
    assert len(webhook.deliveries) == sent
    assert str(destination.pk) not in due_destinations()

    webhook.status = 200
    response = login(acme.owner, sudo=True).post(reverse("audit:stream_resume", args=["acme"]))
    assert response.status_code == 302
    assert str(destination.pk) in due_destinations()
    assert stream_deliver(str(destination.pk)) > 0

    # Every event accepted once, in order: none lost to the failures or the pause.
    events = trail(acme.tenant)
    assert [e["seq"] for e in webhook.events()] == [e.seq for e in events]
    assert fresh(destination).cursor == events[-1].seq
    assert (
        'data-testid="stream-banner"'
        not in login(acme.viewer).get(reverse("console:dashboard", args=["acme"])).content.decode()
    )


def test_failing_for_longer_than_the_setting_pauses(
    acme: TenantUsers, webhook: WebhookReceiver, allow_loopback: None, settings: Any
) -> None:
    settings.KEYWARD_AUDIT_STREAM_PAUSE_AFTER_SECONDS = 600
    destination = to_webhook(acme.tenant, webhook)
    destination.failing_since = timezone.now() - timedelta(seconds=601)
    destination.save()
    webhook.status = 500
    assert stream_deliver(str(destination.pk)) == 0
    destination = fresh(destination)
    assert (destination.state, destination.failures) == (StreamState.PAUSED, 1)


@pytest.mark.django_db(transaction=True)
def test_a_second_worker_leaves_a_destination_that_is_being_delivered(
    acme: TenantUsers, webhook: WebhookReceiver, allow_loopback: None
) -> None:
    destination = to_webhook(acme.tenant, webhook)
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                StreamDestination.objects.select_for_update().get(pk=destination.pk)
                locked.set()
                done.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        assert stream_deliver(str(destination.pk)) == 0
        assert webhook.deliveries == []
    finally:
        done.set()
        holder.join()
    assert stream_deliver(str(destination.pk)) > 0


def test_beat_finds_destinations_with_events_to_send(
    acme: TenantUsers, globex: TenantUsers, webhook: WebhookReceiver, allow_loopback: None
) -> None:
    assert django_settings.CELERY_BEAT_SCHEDULE["audit-stream-due"]["task"] == "audit.stream_due"
    destination = to_webhook(acme.tenant, webhook)
    assert due_destinations() == [str(destination.pk)]
    stream_deliver(str(destination.pk))
    assert due_destinations() == []
    add_events(acme.tenant, 1)
    add_events(globex.tenant, 1)  # globex streams nowhere
    assert due_destinations() == [str(destination.pk)]
