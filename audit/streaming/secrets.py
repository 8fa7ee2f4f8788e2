"""The webhook's signing secret: made here, shown once, kept only sealed.

Sealed under the vendor root key (through the hooks keys registers), bound to
the destination's id, so a sealed value copied to another row does not open.
"""

from __future__ import annotations

import hashlib
import secrets

from audit.models import StreamDestination
from audit.streaming.hooks import hooks

# A sealing purpose (what the sealed value is for), not a secret.
STREAM_SECRET = "audit.stream.webhook_secret"  # noqa: S105
_PREFIX = "kwhs_"


def secret_new() -> str:
    """256 random bits, as text a receiver uses as its HMAC key byte for byte."""
    return _PREFIX + secrets.token_urlsafe(32)


def secret_seal(destination: StreamDestination, secret: str) -> None:
    """Seal `secret` onto the (unsaved) destination; `secret_ref` tells seals apart."""
    stored = hooks().seal(STREAM_SECRET, str(destination.pk), secret.encode())
    destination.sealed_secret = stored
    destination.secret_ref = hashlib.sha256(stored).hexdigest()[:16]


def secret_of(destination: StreamDestination) -> bytes:
    stored = bytes(destination.sealed_secret or b"")
    if not stored:
        raise LookupError("no webhook secret is saved for this destination")
    return hooks().unseal(STREAM_SECRET, str(destination.pk), stored)
