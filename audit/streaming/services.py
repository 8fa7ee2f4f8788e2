"""Changing where a tenant's audit events go: configure, resume, remove.

Each is an owner's sensitive action (the views ask for sudo mode) and one
audit event. The webhook secret is returned once, by `stream_configure`,
and is never readable again.
"""

from __future__ import annotations

import ssl
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from audit.models import StreamDestination, StreamKind, StreamState
from audit.services import Actor, record
from audit.streaming.address import InvalidDestination, checked_addresses, webhook_parts
from audit.streaming.secrets import secret_new, secret_seal
from audit.streaming.tasks import deliver

_MAX_CA = 65536


class StreamRefused(Exception):
    """What the person asked cannot be done now; the message says why."""


def _check_ca(ca_pem: str) -> str:
    ca_pem = ca_pem.strip()
    if not ca_pem:
        return ""
    if len(ca_pem) > _MAX_CA or "-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise InvalidDestination(
            "Paste one or more PEM certificates (-----BEGIN CERTIFICATE----- ...), at most 64 KB.",
            field="ca_pem",
        )
    try:
        ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidDestination(
            f"These CA certificates cannot be read ({exc}).", field="ca_pem"
        ) from None
    return ca_pem + "\n"


def _enqueue(destination: StreamDestination) -> None:
    destination_id = str(destination.pk)
    transaction.on_commit(lambda: deliver.delay(destination_id))


@transaction.atomic
def stream_configure(
    *,
    tenant: Any,
    actor: Actor,
    kind: str,
    host: str = "",
    port: int | None = None,
    url: str = "",
    ca_pem: str = "",
    new_secret: bool = False,
    request: HttpRequest | None = None,
) -> str | None:
    """Point the tenant's stream at a destination; return a new webhook secret, if any.

    1. Check the destination as it would be reached (addresses, CA certificates).
    2. A new address starts from the first event, so the new SIEM gets the whole
       trail; a changed CA keeps the cursor. Saving makes the stream active again.
    3. A webhook gets a secret when it has none, or when a new one is asked for.
    """
    if kind == StreamKind.WEBHOOK:
        host, port = webhook_parts(url)
    elif kind == StreamKind.SYSLOG:
        url = ""
        if port is None:
            raise InvalidDestination(
                "Enter the syslog server's TLS port (often 6514).", field="port"
            )
    else:
        raise InvalidDestination(f"Choose syslog or webhook, not {kind!r}.", field="kind")
    checked_addresses(tenant, host, port, field="url" if kind == StreamKind.WEBHOOK else "host")
    ca = _check_ca(ca_pem)

    destination = StreamDestination.objects.select_for_update().filter(tenant=tenant).first()
    created = destination is None
    if destination is None:
        destination = StreamDestination(tenant=tenant)
    moved = created or (destination.kind, destination.host, destination.port, destination.url) != (
        kind,
        host,
        port,
        url,
    )
    destination.kind = kind
    destination.host = host
    destination.port = port
    destination.url = url
    destination.ca_pem = ca
    if moved:
        destination.cursor = 0
    destination.state = StreamState.ACTIVE
    destination.failures = 0
    destination.failing_since = None
    destination.next_attempt_at = None
    destination.last_error = ""
    destination.paused_at = None
    secret = None
    if kind == StreamKind.WEBHOOK:
        if new_secret or not destination.sealed_secret:
            secret = secret_new()
            secret_seal(destination, secret)
    else:
        destination.sealed_secret = None
        destination.secret_ref = ""
    destination.save()
    record(
        tenant=tenant,
        actor=actor,
        action="audit.stream_configure",
        target=destination.address,
        details={
            "kind": kind,
            "from_first_event": moved,
            "ca": "own" if ca else "default",
            "secret": "new" if secret else ("kept" if kind == StreamKind.WEBHOOK else "none"),
        },
        request=request,
    )
    _enqueue(destination)
    return secret


def _destination(tenant: Any) -> StreamDestination:
    destination = StreamDestination.objects.select_for_update().filter(tenant=tenant).first()
    if destination is None:
        raise StreamRefused("No destination is configured for this tenant's audit events.")
    return destination


@transaction.atomic
def stream_resume(*, tenant: Any, actor: Actor, request: HttpRequest | None = None) -> None:
    """Deliver again from where it stopped (the cursor never moved while paused)."""
    destination = _destination(tenant)
    if destination.state != StreamState.PAUSED:
        raise StreamRefused("The audit stream is not paused.")
    destination.state = StreamState.ACTIVE
    destination.failures = 0
    destination.failing_since = None
    destination.next_attempt_at = None
    destination.paused_at = None
    destination.save()
    record(
        tenant=tenant,
        actor=actor,
        action="audit.stream_resume",
        target=destination.address,
        details={"from_seq": destination.cursor + 1},
        request=request,
    )
    _enqueue(destination)


@transaction.atomic
def stream_remove(*, tenant: Any, actor: Actor, request: HttpRequest | None = None) -> None:
    destination = _destination(tenant)
    address = destination.address
    delivered = destination.cursor
    destination.delete()
    record(
        tenant=tenant,
        actor=actor,
        action="audit.stream_remove",
        target=address,
        details={"delivered_to": delivered},
        request=request,
    )
