"""Delivering a tenant's events to its destination: in order, at least once.

The destination's row is the lock and the cursor. Each batch is sent while
its row is locked (FOR UPDATE SKIP LOCKED: a second worker finds it taken
and leaves), and the cursor moves in the same transaction, after the
destination accepted the batch. A worker killed mid-batch leaves the cursor
where it was: the next run sends that batch again (the same event ids), and
nothing after it has been sent yet.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from audit.export import event_row
from audit.models import AuditChain, AuditEvent, Outcome, StreamDestination, StreamKind, StreamState
from audit.services import Actor, chain_key, record
from audit.streaming.address import InvalidDestination, checked_addresses
from audit.streaming.secrets import secret_of
from audit.streaming.transport import (
    DeliveryFailed,
    StreamEvent,
    Target,
    send_syslog,
    send_webhook,
)

logger = logging.getLogger(__name__)

# Sent (after commit) when a destination is paused: keyword `destination`. The
# tenants app emails the owners; audit cannot name them.
stream_paused = Signal()

# One task delivers batches for at most this long; beat starts the next one.
_RUN_SECONDS = 30.0


def _target(destination: StreamDestination) -> Target:
    tenant = destination.tenant
    try:
        addresses = checked_addresses(tenant, destination.host, destination.port)
    except InvalidDestination as exc:
        raise DeliveryFailed(str(exc)) from None
    path = "/"
    secret = b""
    if destination.kind == StreamKind.WEBHOOK:
        parts = urlsplit(destination.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            secret = secret_of(destination)
        except LookupError as exc:
            raise DeliveryFailed(str(exc)) from None
    return Target(
        host=destination.host,
        port=destination.port,
        addresses=addresses,
        timeout=float(settings.KEYWARD_AUDIT_STREAM_TIMEOUT_SECONDS),
        ca_pem=destination.ca_pem,
        ca_file=settings.KEYWARD_AUDIT_STREAM_CA_BUNDLE,
        path=path,
        secret=secret,
    )


def _send(destination: StreamDestination, events: list[AuditEvent]) -> None:
    slug = destination.tenant.slug
    batch = [StreamEvent(str(e.id), slug, event_row(e)) for e in events]
    target = _target(destination)
    if destination.kind == StreamKind.WEBHOOK:
        send_webhook(target, batch)
    else:
        send_syslog(target, batch, hostname=socket.gethostname())


def backoff_seconds(failures: int) -> float:
    """2^failures seconds, capped, with jitter so that retries do not arrive in step."""
    ceiling = min(float(settings.KEYWARD_AUDIT_STREAM_BACKOFF_MAX_SECONDS), 2.0**failures)
    return ceiling * random.uniform(0.5, 1.0)


def _failed(destination: StreamDestination, error: DeliveryFailed) -> None:
    now = timezone.now()
    destination.failures += 1
    destination.failing_since = destination.failing_since or now
    destination.last_error = str(error)[:1000]
    failing_for = (now - destination.failing_since).total_seconds()
    logger.warning(
        "audit stream of tenant %s: delivery failed (%d in a row): %s",
        destination.tenant.slug,
        destination.failures,
        destination.last_error,
    )
    if (
        destination.failures >= settings.KEYWARD_AUDIT_STREAM_PAUSE_AFTER_FAILURES
        or failing_for >= settings.KEYWARD_AUDIT_STREAM_PAUSE_AFTER_SECONDS
    ):
        destination.state = StreamState.PAUSED
        destination.paused_at = now
        destination.next_attempt_at = None
        record(
            tenant=destination.tenant,
            actor=Actor.system("audit stream"),
            action="audit.stream_pause",
            outcome=Outcome.FAILURE,
            target=destination.address,
            reason=destination.last_error,
            details={"failures": destination.failures, "delivered_to": destination.cursor},
        )
        paused = destination
        transaction.on_commit(lambda: stream_paused.send(StreamDestination, destination=paused))
    else:
        delay = backoff_seconds(destination.failures)
        destination.next_attempt_at = now + timedelta(seconds=delay)
    destination.save()


def _delivered(destination: StreamDestination, last_seq: int) -> None:
    destination.cursor = last_seq
    destination.failures = 0
    destination.failing_since = None
    destination.next_attempt_at = None
    destination.last_error = ""
    destination.last_delivered_at = timezone.now()
    destination.save(
        update_fields=[
            "cursor",
            "failures",
            "failing_since",
            "next_attempt_at",
            "last_error",
            "last_delivered_at",
        ]
    )


def stream_deliver(destination_id: str) -> int:
    """Send the destination's pending events, batch by batch; return how many went.

    1. Lock the destination's row, skipping it if another worker holds it.
    2. Stop if it is paused, waiting out a backoff, or has nothing to send.
    3. Send the next batch after the cursor; on success move the cursor, on
       failure count it (back off, or pause) and stop.
    4. Commit, and go on with the next batch while time is left.
    """
    delivered = 0
    started = time.monotonic()
    while time.monotonic() - started < _RUN_SECONDS:
        with transaction.atomic():
            destination = (
                StreamDestination.objects.select_for_update(skip_locked=True)
                .select_related("tenant")
                .filter(pk=destination_id, state=StreamState.ACTIVE)
                .first()
            )
            if destination is None:
                return delivered
            if destination.next_attempt_at and destination.next_attempt_at > timezone.now():
                return delivered
            events = list(
                AuditEvent.objects.filter(
                    chain=chain_key(destination.tenant), seq__gt=destination.cursor
                ).order_by("seq")[: settings.KEYWARD_AUDIT_STREAM_BATCH_SIZE]
            )
            if not events:
                return delivered
            try:
                _send(destination, events)
            except DeliveryFailed as exc:
                _failed(destination, exc)
                return delivered
            _delivered(destination, events[-1].seq)
            delivered += len(events)
    return delivered


def due_destinations() -> list[str]:
    """Active destinations with events after their cursor and no backoff to wait out."""
    now = timezone.now()
    due = []
    for destination in StreamDestination.objects.filter(state=StreamState.ACTIVE).select_related(
        "tenant"
    ):
        if destination.next_attempt_at and destination.next_attempt_at > now:
            continue
        head = AuditChain.objects.filter(key=chain_key(destination.tenant)).first()
        if head is not None and head.last_seq > destination.cursor:
            due.append(str(destination.pk))
    return due
