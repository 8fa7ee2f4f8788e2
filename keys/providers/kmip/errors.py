"""KMIP failures onto base.py's errors, with messages that say what to change.

The provider's own exception classes, the KMIP result reasons that mean the
customer cut access, the TLS alerts explained, and the key states that refuse use.
"""

from __future__ import annotations

import ssl
from typing import Any

from keys.providers.base import KeyAccessDenied, KeyProviderError, KeyUnavailable
from keys.providers.kmip.pykmip import enums


class KmipTlsError(KeyUnavailable):
    """The TLS handshake failed; `problem` says what is wrong and what to change."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


class KmipConnectError(KeyUnavailable):
    """The server could not be reached (DNS, refused, timeout, refused address)."""


class _KmipReason:
    operation: str = ""
    reason: Any = None


class KmipAccessDenied(_KmipReason, KeyAccessDenied):
    def __init__(self, message: str, operation: str = "", reason: Any = None) -> None:
        super().__init__(message)
        self.operation, self.reason = operation, reason


class KmipUnavailable(_KmipReason, KeyUnavailable):
    def __init__(self, message: str, operation: str = "", reason: Any = None) -> None:
        super().__init__(message)
        self.operation, self.reason = operation, reason


R = enums.ResultReason
_DENIED_REASONS = {
    R.ITEM_NOT_FOUND,
    R.PERMISSION_DENIED,
    R.OBJECT_ARCHIVED,
    R.OBJECT_DESTROYED,
    R.OBJECT_NOT_FOUND,
    R.NOT_AUTHORISED,
    R.AUTHENTICATION_NOT_SUCCESSFUL,
    R.BAD_PASSWORD,
}
# Decrypt failing for these may be the blob's fault (PyKMIP answers a bad padding with
# GENERAL_FAILURE); a fresh round trip decides.
MAYBE_BAD_BLOB = {
    R.CRYPTOGRAPHIC_FAILURE,
    R.GENERAL_FAILURE,
    R.INVALID_FIELD,
    R.INVALID_MESSAGE,
    R.BAD_CRYPTOGRAPHIC_PARAMETERS,
}
_CLIENT_CERT_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "the server says it has expired: upload a renewed client certificate"
    ),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "the server says it is not a client certificate; it needs the clientAuth extended key usage"
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server found it invalid",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the server says it was revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server could not verify it",
    "TLSV1_ALERT_UNKNOWN_CA": (
        "the server does not trust the CA that issued it; have the KMIP server's "
        "administrator issue it or trust its CA"
    ),
    "TLSV1_ALERT_ACCESS_DENIED": "the server denied access to it",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server required a client certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the server could not verify its signature",
}
_GENERIC_ALERT = "TLS handshake failed"


def _reason_name(reason: Any) -> str:
    return getattr(reason, "name", None) or str(reason or "no reason given")


def _server_text(message: object) -> str:
    text = " ".join(str(message or "").split())
    return text[:200] + "..." if len(text) > 200 else text


def tls_problem(exc: ssl.SSLError, host: str) -> str:
    """A message that names the TLS problem and what to change."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", 0)
        verify = getattr(exc, "verify_message", "") or str(exc.reason or exc)
        detail = f"(certificate verify failed: {verify})"
        if code in (2, 19, 20, 21, 30):
            return (
                f"the server's certificate was not signed by the CA you uploaded {detail}: "
                "upload the CA certificate that issued the KMIP server's certificate"
            )
        if code == 10:
            return f"the server's certificate has expired {detail}: the server must renew it"
        if code == 9:
            return f"the server's certificate is not valid yet {detail}"
        if code == 62 or "hostname mismatch" in verify.lower() or "IP address mismatch" in verify:
            return (
                f"the server's certificate is not valid for {host!r} {detail}: enter the host "
                "name that the server's certificate names"
            )
        return f"the server's certificate could not be verified {detail}"
    reason = str(exc.reason or "")
    if reason in _CLIENT_CERT_ALERTS:
        return (
            f"the server did not accept the client certificate ({reason}): "
            f"{_CLIENT_CERT_ALERTS[reason]}"
        )
    if reason in (
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
        "HTTP_REQUEST",
    ):
        return f"the server did not answer with TLS ({reason}): check the port (KMIP uses 5696)"
    if reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
        return f"the server does not offer TLS 1.2 or later ({reason})"
    if reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE"):
        return (
            f"{_GENERIC_ALERT} ({reason}): the server and Keyward share no cipher suite, or the "
            "server did not accept the client certificate"
        )
    return f"{_GENERIC_ALERT} ({reason or type(exc).__name__})"


def server_refusal(operation: str, uid: str | None, reason: Any, message: Any) -> KeyProviderError:
    """A KMIP result other than Success: denied for the reasons above, else unavailable."""
    target = f" on key {uid}" if uid else ""
    text = f"the KMIP server refused {operation}{target}: {_reason_name(reason)}" + (
        f" ({_server_text(message)})" if _server_text(message) else ""
    )
    if reason in _DENIED_REASONS:
        return KmipAccessDenied(text, operation, reason)
    return KmipUnavailable(text, operation, reason)


_STATE_ADVICE = {
    "PRE_ACTIVE": "is pre-active: activate it on the KMIP server",
    "DEACTIVATED": "is deactivated (revoked): it can no longer encrypt or decrypt",
    "COMPROMISED": "is marked compromised (revoked): it can no longer encrypt or decrypt",
    "DESTROYED": "was destroyed",
    "DESTROYED_COMPROMISED": "was destroyed",
}


def state_detail(uid: str, state: Any) -> str:
    name = _reason_name(state)
    return f"key {uid} " + _STATE_ADVICE.get(name, f"is in state {name}, not Active")


def transport_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
