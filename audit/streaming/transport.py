"""Sending a batch of events: syslog over TLS (RFC 5424 messages, RFC 6587
octet counting) or an HTTPS POST signed with HMAC-SHA-256.

Both connect only to an address checked just before (`address`), and verify
the server's certificate against the destination's name, always.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_USER_AGENT = "Keyward-Audit-Stream/1"
# RFC 5424 structured data needs an enterprise number after the "@"; 32473 is
# the one IANA reserves for documentation and examples (RFC 5612).
SD_ID = "keyward@32473"
# Facility 13, "log audit"; severity by outcome.
_FACILITY = 13
_SEVERITY = {"success": 6, "denied": 5, "failure": 4}


class DeliveryFailed(Exception):
    """The destination did not take the batch; the message says why (no secrets)."""


@dataclass(frozen=True)
class StreamEvent:
    id: str
    tenant: str  # the tenant's slug
    row: dict[str, Any]  # audit.export.event_row: what the exports and the API give

    def document(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, **self.row}


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    addresses: Sequence[str]
    timeout: float
    ca_pem: str = ""
    ca_file: str = ""
    path: str = "/"  # webhooks: path and query
    secret: bytes = field(default=b"", repr=False)


def tls_context(ca_pem: str, ca_file: str) -> ssl.SSLContext:
    """Certificate and host name checked, TLS 1.2 at least; the destination's own CA
    certificates if it has some, else the operator's bundle, else the system's."""
    try:
        if ca_pem:
            context = ssl.create_default_context(cadata=ca_pem)
        elif ca_file:
            context = ssl.create_default_context(cafile=ca_file)
        else:
            context = ssl.create_default_context()
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise DeliveryFailed(f"the CA certificates cannot be loaded ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _connect(target: Target) -> ssl.SSLSocket:
    context = tls_context(target.ca_pem, target.ca_file)
    errors = []
    for address in target.addresses:
        try:
            sock = socket.create_connection((address, target.port), timeout=target.timeout)
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
            continue
        try:
            return context.wrap_socket(sock, server_hostname=target.host)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise DeliveryFailed(f"TLS with {target.host} ({address}) failed: {exc}") from None
    raise DeliveryFailed(f"cannot connect to {target.host}:{target.port}: " + "; ".join(errors))


# --- Syslog --------------------------------------------------------------------


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields: printable US-ASCII without spaces, or "-"."""
    kept = "".join(ch for ch in text if 33 <= ord(ch) <= 126)[:limit]
    return kept or "-"


def _sd_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(event: StreamEvent, *, hostname: str) -> bytes:
    """One RFC 5424 message: the event id, sequence number and tenant in structured
    data, the event (as the exports give it) as JSON in MSG."""
    row = event.row
    pri = _FACILITY * 8 + _SEVERITY.get(str(row.get("outcome")), 5)
    params = {
        "id": event.id,
        "seq": row["seq"],
        "tenant": event.tenant,
        "action": row["action"],
        "outcome": row["outcome"],
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    header = (
        f"<{pri}>1 {row['time']} {_printable(hostname, 255)} keyward - "
        f"{_printable(str(row['action']), 32)} {sd} "
    )
    body = json.dumps(event.document(), sort_keys=True, separators=(",", ":"))
    return (header + body).encode()


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing: "MSG-LEN SP SYSLOG-MSG"."""
    return str(len(message)).encode() + b" " + message


def send_syslog(target: Target, events: Sequence[StreamEvent], *, hostname: str) -> None:
    """Send the batch on one connection and close it cleanly.

    Syslog has no acknowledgement: a batch counts as delivered once it was
    written and the server closed the TLS session after reading it. A cut before that sends
    the batch again, so a receiver may see an event twice (same id), never a gap.
    """
    payload = b"".join(octet_counted(syslog_message(e, hostname=hostname)) for e in events)
    tls = _connect(target)
    try:
        tls.sendall(payload)
        # Our close_notify, then wait for the server to end the session: it has
        # read everything before it. rsyslog closes the connection without a
        # close_notify of its own, which is this EOF.
        with contextlib.suppress(ssl.SSLEOFError):
            tls.unwrap().close()
    except (ssl.SSLError, OSError) as exc:
        raise DeliveryFailed(f"sending to {target.host}:{target.port} failed: {exc}") from None
    finally:
        tls.close()


# --- Webhook --------------------------------------------------------------------


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Keyward-Signature value: HMAC-SHA-256 over "<timestamp>.<body>"."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhook_body(events: Sequence[StreamEvent]) -> bytes:
    return json.dumps(
        {"events": [e.document() for e in events]}, sort_keys=True, separators=(",", ":")
    ).encode()


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the address that was checked, verified against the URL's host name:
    the name is not resolved again, so it cannot be rebound to another address."""

    def __init__(self, target: Target) -> None:
        super().__init__(target.host, target.port, timeout=target.timeout)
        self._target = target

    def connect(self) -> None:
        self.sock = _connect(self._target)


def send_webhook(target: Target, events: Sequence[StreamEvent]) -> None:
    """POST the batch; any 2xx answer is the receiver's acknowledgement."""
    body = webhook_body(events)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        "X-Keyward-Timestamp": timestamp,
        "X-Keyward-Signature": signature(target.secret, timestamp, body),
        "X-Keyward-Event-Ids": ",".join(e.id for e in events),
        "X-Keyward-Seq": f"{events[0].row['seq']}-{events[-1].row['seq']}",
    }
    connection = _CheckedHTTPSConnection(target)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(4096)
    except (http.client.HTTPException, OSError) as exc:
        raise DeliveryFailed(f"POST to {target.host} failed: {exc}") from None
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise DeliveryFailed(
            f"the webhook answered {response.status} {response.reason} (expected 2xx)"
        )
