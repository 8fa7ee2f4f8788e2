"""A key on the customer's KMIP server as the KEK, through PyKMIP's client.

Framework-free: the configuration arrives as plain values (`KmipConfig`,
`KmipCredentials`), and nothing here imports Django.

Connection
- Mutual TLS with a context built here: TLS 1.2 or later, the customer's CA as
  the only trust anchor, the server certificate checked against the host name
  the customer entered. The client certificate and its (possibly encrypted)
  private key reach OpenSSL through anonymous memory files (`memfd_create`),
  so no key, decrypted or not, is ever written to disk.
- SSRF: every connection resolves the host again, refuses loopback, private,
  link-local, multicast, reserved and unspecified addresses (unless the
  operator allows private ones), and connects to the address it checked, not
  to the name again, so a DNS answer that changes between the check and the
  connection (rebinding) cannot redirect us.
- PyKMIP's `KMIPProxy` keeps its message encoding; only its `open()` is
  replaced, handing it the socket made here (PyKMIP's own TLS code uses the
  deprecated `PROTOCOL_TLS` and reads certificates from file paths).
- One connection per provider, reused under a lock: a KMIP request on an open
  connection is one round trip, a new connection three more (TCP, then two for
  the TLS 1.2 handshake) plus the server's private-key operation. Measured on
  loopback against PyKMIP's server: 7 ms per Encrypt on an open connection,
  17 ms with a new connection each time; across a WAN the gap grows with the
  round trips. Requests are serialized per provider (PyKMIP's client is not
  thread-safe). A connection idle for a minute, or that the server has closed,
  is replaced before use; a request that is safe to repeat is retried once on a
  new connection when a reused one turns out dead (Create, Activate, Revoke and
  Destroy are not repeated).
- The protocol version is the highest of KMIP 1.0 to 1.4 that the server lists
  in DiscoverVersions (KMIP 1.0 when it cannot answer).

Wrapping (blob version 1, the server encrypts)
    blob = 0x01 | iv (16) | ciphertext (48) | tag (32)
    ciphertext = KMIP Encrypt(DEK) with AES-CBC, PKCS5 padding, the random iv
    tag = HMAC-SHA256(key=DEK, b"keyward kmip wrap v1" | encode_context | iv | ciphertext)
  CBC has neither integrity nor associated data (and PyKMIP's client cannot
  carry a GCM tag), so the context is bound and tampering detected here: only
  the holder of the DEK can make a valid tag, and the DEK is what the server
  decrypts. A tag that does not verify, a wrong length and a padding failure
  all give the same `KeyMaterialInvalid`, so the answer is no padding oracle.

Wrapping (blob version 2, servers without Encrypt/Decrypt)
    blob = 0x02 | nonce (12) | AES-256-GCM(key, nonce, DEK, aad) (48)
    aad  = b"keyward kmip local v1" | encode_context
  The key is fetched with Get (after checking that it is Active) and kept in
  process memory only, for `key_cache_seconds`; never on disk.

Errors, onto base.py's contract
- `KeyUnavailable`: connection refused, timeouts, DNS failures, the host now
  resolving to a refused address, TLS failures (`KmipTlsError`, whose `problem`
  says what to fix), and KMIP failures not listed below. A TLS failure is not
  treated as the customer cutting access: an expired client certificate is
  ours to renew, and the tenant stays degraded (caches serve) meanwhile.
- `KeyAccessDenied`: ITEM_NOT_FOUND, PERMISSION_DENIED, OBJECT_ARCHIVED,
  OBJECT_DESTROYED, NOT_AUTHORISED, AUTHENTICATION_NOT_SUCCESSFUL and the key
  not being Active (revoked, destroyed, deactivated, compromised, pre-active).
- `KeyMaterialInvalid`: a blob that is malformed, tampered or wrapped under
  another context, a DEK that is not 32 bytes, a key that is not AES-256.
  When Decrypt itself fails for another reason, a fresh Encrypt/Decrypt round
  trip with the same key tells a bad blob (round trip works) from a server
  problem (it fails, and that failure is raised).
No message contains key material, and nothing is logged at a level that
could: PyKMIP's wire logger (hex dumps of messages) is replaced by a silent one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import select
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID

from keys.providers.base import (
    CheckResult,
    Context,
    KeyAccessDenied,
    KeyDescription,
    KeyHealth,
    KeyMaterialInvalid,
    KeyProvider,
    KeyProviderError,
    KeyUnavailable,
    Wrapped,
)
from keys.providers.context import encode_context

# `import kmip` loads SQLAlchemy models declared the pre-2.0 way, which warns once.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kmip.core import enums
    from kmip.core.enums import KMIPVersion
    from kmip.pie.client import ProxyKmipClient
    from kmip.pie.exceptions import KmipOperationFailure
    from kmip.services.kmip_client import KMIPProxy
    from kmip.services.kmip_protocol import KMIPProtocol, RequestLengthMismatch

T = TypeVar("T")

CHECK_TLS = "TLS connection"
CHECK_VERSIONS = "Protocol versions"
CHECK_OPERATIONS = "Operations"
CHECK_ROUND_TRIP = "Round trip"
CHECK_KEY_ACTIVE = "Key active"

DEK_BYTES = 32
_BLOB_SERVER = 1
_BLOB_LOCAL = 2
_WRAP_LABEL = b"keyward kmip wrap v1"
_LOCAL_LABEL = b"keyward kmip local v1"
_IV = 16
_NONCE = 12
_TAG = 32
_CBC_CIPHERTEXT = DEK_BYTES + 16  # PKCS5 always pads: a full block after 32 bytes
_SERVER_BLOB = 1 + _IV + _CBC_CIPHERTEXT + _TAG
_LOCAL_BLOB = 1 + _NONCE + DEK_BYTES + 16

_MAX_CA_PEM = 256 * 1024  # a bundle of a few CA certificates
_MAX_CERT_PEM = 64 * 1024  # a client certificate and its intermediates
_MAX_KEY_PEM = 32 * 1024
_MIN_RSA_BITS = 2048
_MAX_TEXT = 256
_IDLE_SECONDS = 60.0  # reconnect rather than trust a connection idle this long

_CBC = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.CBC,
    "padding_method": enums.PaddingMethod.PKCS5,
}

# Versions this client speaks, best first (PyKMIP's 2.0 encoding changes attributes).
_VERSIONS: dict[tuple[int, int], KMIPVersion] = {
    (1, 4): KMIPVersion.KMIP_1_4,
    (1, 3): KMIPVersion.KMIP_1_3,
    (1, 2): KMIPVersion.KMIP_1_2,
    (1, 1): KMIPVersion.KMIP_1_1,
    (1, 0): KMIPVersion.KMIP_1_0,
}

_NEEDED_OPERATIONS = ("Create", "Activate", "Get Attributes", "Revoke", "Destroy")

# PyKMIP's KMIPProtocol logs every message in hex at DEBUG, plaintext included.
_WIRE_LOG = logging.Logger("keyward.kmip.wire", level=logging.CRITICAL)

# -- configuration ---------------------------------------------------------------


class InvalidKmipConfig(ValueError):
    """A KMIP setting is malformed or not allowed; the message names the field and the fix."""


class InvalidKmipMaterial(InvalidKmipConfig):
    """An uploaded certificate, key or passphrase is unusable.

    `field` is "ca_cert", "client_cert", "client_key" or "passphrase".
    """

    field: str

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ClientMaterialInfo:
    """What the console shows about validated uploads: nothing secret."""

    subject: str
    issuer: str
    not_after: datetime
    fingerprint_sha256: str
    ca_subject: str


_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


def _show(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _host_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _check_host_syntax(host: object) -> str:
    """The host as given, if it is a DNS name or an IP literal; raise InvalidKmipConfig."""
    if not isinstance(host, str):
        raise InvalidKmipConfig(f"host: must be text, not {type(host).__name__}")
    if not host:
        raise InvalidKmipConfig("host: enter the KMIP server's host name or IP address")
    if any(ch.isspace() for ch in host):
        raise InvalidKmipConfig(f"host: must not contain spaces or line breaks: {_show(host)}")
    if "://" in host or any(ch in host for ch in "/?#@\\"):
        raise InvalidKmipConfig(
            f"host: enter only the host name, like kmip.example.com, without a scheme, "
            f"user or path: {_show(host)}"
        )
    if _host_literal(host) is not None:
        return host
    if ":" in host:
        raise InvalidKmipConfig(
            f"host: enter the port in the port field, not after the host name: {_show(host)}"
        )
    if not host.isascii():
        raise InvalidKmipConfig(
            f"host: {_show(host)} is not ASCII; enter an internationalized name in its "
            "xn-- (punycode) form"
        )
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise InvalidKmipConfig(
            f"host: {_show(host)} is not a valid host name (labels of letters, digits and "
            "hyphens, separated by dots) or IP address"
        )
    if name.replace(".", "").isdigit():
        raise InvalidKmipConfig(f"host: {_show(host)} is not a valid IPv4 address")
    return host


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise InvalidKmipConfig(f"port: must be a whole number, not {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise InvalidKmipConfig(f"port: must be 1 to 65535 (KMIP uses 5696), not {port}")
    return port


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be connected to, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return _refusal(mapped)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (such as a cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private network address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "an address that is not publicly routable"
    return None


def _default_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _networks(allowed: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(network, strict=False) for network in allowed]
    except (TypeError, ValueError):
        raise InvalidKmipConfig(
            f"allowed_networks: {list(allowed)!r} must be networks like 10.20.0.0/16"
        ) from None


def _checked_addresses(
    host: str,
    port: int,
    *,
    allow_private: bool,
    resolve: Callable[[str, int], list[str]] | None = None,
    allowed_networks: Sequence[str] = (),
) -> list[str]:
    """The addresses to connect to, each checked; raise InvalidKmipConfig."""
    _check_host_syntax(host)
    _check_port(port)
    networks = _networks(allowed_networks)
    literal = _host_literal(host)
    if literal is not None:
        found = [str(literal)]
    else:
        try:
            found = list((resolve or _default_resolve)(host, port))
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise InvalidKmipConfig(f"host: could not resolve {host!r} ({reason})") from None
        if not found:
            raise InvalidKmipConfig(f"host: could not resolve {host!r} (no addresses)")
    addresses: list[str] = []
    for text in found:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise InvalidKmipConfig(
                f"host: {host!r} resolved to {text!r}, which is not an IP address"
            ) from None
        why = _refusal(address)
        if why and any(address in network for network in networks):
            why = None  # the operator allows this network (a private link, say)
        if why and not allow_private:
            shown = host if literal is not None else f"{host} resolves to {address}, which"
            raise InvalidKmipConfig(
                f"host: {shown} is {why}; a KMIP server must be reachable at a public "
                "address (the operator can allow private addresses for on-premises use)"
            )
        if str(address) not in addresses:
            addresses.append(str(address))
    return addresses


def validate_host(
    host: str,
    port: int,
    *,
    allow_private: bool = False,
    resolve: Callable[[str, int], list[str]] | None = None,
    allowed_networks: Sequence[str] = (),
) -> None:
    """Check a KMIP host and port as the customer entered them; raise InvalidKmipConfig.

    The host is a DNS name or an IP literal (no scheme, path or spaces) and the
    port 1 to 65535. The name is resolved (`resolve`, by default getaddrinfo)
    and refused when any address is loopback, private, link-local, multicast,
    reserved or unspecified, unless `allow_private`, or unless the address is in
    one of the operator's `allowed_networks` (CIDR). The provider repeats this
    check for every connection, and connects to the address it checked.
    """
    _checked_addresses(
        host, port, allow_private=allow_private, resolve=resolve, allowed_networks=allowed_networks
    )


@dataclass(frozen=True)
class KmipConfig:
    """What the customer configures (secrets live in `KmipCredentials`)."""

    host: str
    port: int = 5696
    key_uid: str | None = None
    key_name: str = "keyward"
    username: str | None = None
    allow_private: bool = field(default=False, repr=False)
    # Private networks the operator allows (CIDR), e.g. a customer's private link.
    allowed_networks: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _check_host_syntax(self.host)
        _check_port(self.port)
        _networks(self.allowed_networks)
        if self.key_uid is not None:
            _check_text("key_uid", self.key_uid, what="key unique identifier")
        _check_text("key_name", self.key_name, what="key name")
        if self.username is not None:
            _check_text("username", self.username, what="username")

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_text(name: str, value: object, *, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidKmipConfig(f"{name}: the {what} must be text, not {type(value).__name__}")
    if not value or len(value) > _MAX_TEXT:
        raise InvalidKmipConfig(f"{name}: the {what} must be 1 to {_MAX_TEXT} characters")
    if not value.isprintable() or value != value.strip():
        raise InvalidKmipConfig(
            f"{name}: the {what} must not contain control characters or surrounding spaces"
        )
    return value


@dataclass(frozen=True)
class KmipCredentials:
    """The uploaded TLS material and the KMIP account: none of it is ever shown."""

    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    passphrase: bytes | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


# -- uploaded material ------------------------------------------------------------

_FIELD_NAMES = {
    "ca_cert": "server CA certificate",
    "client_cert": "client certificate",
    "client_key": "client private key",
    "passphrase": "passphrase",
}


def _material_error(field_name: str, text: str) -> InvalidKmipMaterial:
    return InvalidKmipMaterial(f"{_FIELD_NAMES[field_name]}: {text}", field=field_name)


def _as_bytes(field_name: str, value: object, limit: int) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _material_error(field_name, "upload a PEM file")
    data = bytes(value)
    if not data.strip():
        raise _material_error(field_name, "the file is empty")
    if len(data) > limit:
        raise _material_error(
            field_name, f"the file is {len(data)} bytes; at most {limit} bytes are accepted"
        )
    return data


def _load_certificates(field_name: str, pem: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        hint = ""
        if b"PRIVATE KEY-----" in pem:
            hint = " (this file holds a private key; upload it as the client private key)"
        elif pem.lstrip()[:1] == b"\x30":
            hint = " (this looks like DER; convert it with: openssl x509 -in FILE -out FILE.pem)"
        raise _material_error(
            field_name, f"not a PEM certificate: no -----BEGIN CERTIFICATE----- line{hint}"
        )
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise _material_error(
            field_name, "the PEM certificate could not be parsed (damaged or truncated?)"
        ) from None


def _name(value: x509.Name) -> str:
    return value.rfc4514_string() or "(empty)"


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _check_dates(field_name: str, cert: x509.Certificate, now: datetime, what: str) -> None:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < before:
        raise _material_error(
            field_name,
            f"{what} is not valid yet: valid from {before:%Y-%m-%d %H:%M} UTC to "
            f"{after:%Y-%m-%d %H:%M} UTC",
        )
    if now > after:
        raise _material_error(
            field_name,
            f"{what} expired on {after:%Y-%m-%d %H:%M} UTC (valid from {before:%Y-%m-%d} "
            "): upload a current one",
        )


def _load_key(key_pem: bytes, passphrase: bytes | None) -> Any:
    if b"PRIVATE KEY-----" not in key_pem:
        hint = ""
        if b"-----BEGIN CERTIFICATE-----" in key_pem:
            hint = " (this file holds a certificate; upload it as the client certificate)"
        raise _material_error(
            "client_key", f"not a PEM private key: no -----BEGIN ... PRIVATE KEY----- line{hint}"
        )
    encrypted = b"ENCRYPTED" in key_pem
    if encrypted and not passphrase:
        raise _material_error(
            "passphrase", "the client private key is encrypted: enter its passphrase"
        )
    if not encrypted and passphrase:
        raise _material_error(
            "passphrase",
            "a passphrase was entered but the client private key is not encrypted: "
            "leave the passphrase empty",
        )
    try:
        return serialization.load_pem_private_key(key_pem, password=passphrase or None)
    except TypeError:
        # cryptography disagrees with the PEM header about encryption.
        raise _material_error(
            "passphrase", "the passphrase does not fit how the client private key is stored"
        ) from None
    except ValueError:
        if encrypted:
            raise _material_error(
                "passphrase", "the passphrase does not open the client private key"
            ) from None
        raise _material_error(
            "client_key", "the private key could not be parsed (damaged or truncated?)"
        ) from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise _material_error("client_key", "this kind of private key is not supported") from None


def _check_key_type(key: Any) -> None:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise _material_error(
                "client_key",
                f"the RSA key has {key.key_size} bits; at least {_MIN_RSA_BITS} are needed",
            )
    elif isinstance(key, dsa.DSAPrivateKey):
        raise _material_error("client_key", "DSA keys are not supported: use RSA or ECDSA")
    elif not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
    ):
        raise _material_error("client_key", "use an RSA, ECDSA or EdDSA private key")


def _check_client_usage(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise _material_error(
                "client_cert",
                "the certificate does not allow TLS client authentication: its extended key "
                "usage lacks clientAuth (TLS Web Client Authentication); ask for a client "
                "certificate",
            )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise _material_error(
            "client_cert",
            "the certificate's key usage lacks digitalSignature, which TLS client "
            "authentication needs",
        )


def _check_ca(cas: list[x509.Certificate], now: datetime) -> None:
    for cert in cas:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise _material_error(
                "ca_cert",
                f"{_name(cert.subject)} is not a CA certificate (basicConstraints CA:TRUE is "
                "missing): upload the certificate of the CA that issued the KMIP server's "
                "certificate, not the server's or a client certificate",
            )
        _check_dates("ca_cert", cert, now, f"the CA certificate {_name(cert.subject)}")


def validate_client_material(
    *,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    passphrase: bytes | None,
    now: datetime | None = None,
) -> ClientMaterialInfo:
    """Check the uploaded CA, client certificate, key and passphrase before saving them.

    1. Each file is PEM within its size limit.
    2. Every certificate in the CA file is a CA (basicConstraints CA:TRUE), in date.
    3. The passphrase opens the key (wrong, missing, or given for a plain key:
       each its own message); the key is RSA (2048 bits or more), ECDSA or EdDSA.
    4. The key belongs to the client certificate (the first in its file).
    5. The client certificate is in date and allows TLS client authentication.
    6. OpenSSL accepts the pair as Python's ssl will load it for connections.
    Raises InvalidKmipMaterial, whose `field` names the upload to change.
    """
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ca_data = _as_bytes("ca_cert", ca_pem, _MAX_CA_PEM)
    cert_data = _as_bytes("client_cert", cert_pem, _MAX_CERT_PEM)
    key_data = _as_bytes("client_key", key_pem, _MAX_KEY_PEM)
    if passphrase is not None and not isinstance(passphrase, bytes | bytearray):
        raise _material_error("passphrase", "must be bytes")
    secret = bytes(passphrase) if passphrase else None
    if secret is not None and len(secret) > 1024:
        raise _material_error("passphrase", "at most 1024 bytes")

    cas = _load_certificates("ca_cert", ca_data)
    _check_ca(cas, when)
    chain = _load_certificates("client_cert", cert_data)
    leaf = chain[0]
    key = _load_key(key_data, secret)
    _check_key_type(key)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise _material_error(
            "client_key",
            f"the private key does not match the client certificate {_name(leaf.subject)}: "
            "upload the key that was generated with this certificate",
        )
    _check_dates("client_cert", leaf, when, "the client certificate")
    _check_client_usage(leaf)
    try:
        _tls_context(ca_data, cert_data, key_data, secret)
    except ssl.SSLError as exc:
        raise _material_error(
            "client_key", f"OpenSSL refused the certificate and key ({exc.reason or exc})"
        ) from None
    return ClientMaterialInfo(
        subject=_name(leaf.subject),
        issuer=_name(leaf.issuer),
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=_fingerprint(leaf),
        ca_subject=_name(cas[0].subject),
    )


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    """A path to `data` in anonymous memory (never on disk), valid inside the block."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _tls_context(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, passphrase: bytes | None
) -> ssl.SSLContext:
    """TLS 1.2+, the customer's CA only, host name checked, our client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    with (
        _memory_file("kmip-client-cert", cert_pem) as certfile,
        _memory_file("kmip-client-key", key_pem) as keyfile,
    ):
        # An empty password rather than None: OpenSSL would otherwise prompt on a terminal.
        context.load_cert_chain(certfile, keyfile, password=passphrase or b"")
    return context


# -- errors --------------------------------------------------------------------------


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
_MAYBE_BAD_BLOB = {
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


def _tls_problem(exc: ssl.SSLError, host: str) -> str:
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


# -- the connection ---------------------------------------------------------------


class _Proxy(KMIPProxy):
    """PyKMIP's proxy with its encoding, on a socket that `connect` makes and verifies."""

    def __init__(self, connect: Callable[[], ssl.SSLSocket], **kwargs: Any) -> None:
        super().__init__(config_file="/dev/null", **kwargs)
        self._connect = connect

    def open(self) -> None:
        self.socket = self._connect()
        self.protocol = KMIPProtocol(self.socket)
        self.protocol.logger = _WIRE_LOG


def _operation_names(operations: Sequence[Any]) -> list[str]:
    return [op.name.replace("_", " ").title() for op in operations]


@dataclass
class _Connection:
    client: Any
    sock: ssl.SSLSocket
    peer: str
    last_used: float


class KmipProvider(KeyProvider):
    """An AES-256 key on the customer's KMIP server."""

    kind = "kmip"
    can_rotate_now = True

    def __init__(
        self,
        config: KmipConfig,
        credentials: KmipCredentials,
        *,
        timeout: float = 10.0,
        key_cache_seconds: float = 300.0,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        if not timeout > 0:
            raise InvalidKmipConfig("timeout: must be a positive number of seconds")
        if not key_cache_seconds >= 0:
            raise InvalidKmipConfig("key_cache_seconds: must be zero or more")
        self.config = config
        self._timeout = float(timeout)
        self._key_cache_seconds = float(key_cache_seconds)
        self._resolve = resolve
        try:
            self._tls = _tls_context(
                credentials.ca_pem,
                credentials.cert_pem,
                credentials.key_pem,
                credentials.passphrase,
            )
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise InvalidKmipMaterial(
                f"the client certificate, key or passphrase could not be loaded ({reason}): "
                "upload them again",
                field="client_key",
            ) from None
        try:
            leaf = x509.load_pem_x509_certificates(credentials.cert_pem)[0]
            self._client_subject = _name(leaf.subject)
        except ValueError:
            self._client_subject = "(unreadable)"
        self._password = credentials.password
        if (config.username is None) != (credentials.password is None):
            raise InvalidKmipConfig(
                "username: a KMIP username and password go together: enter both or neither"
            )
        self._lock = threading.RLock()
        self._conn: _Connection | None = None
        self._version: KMIPVersion | None = None
        self._offered: list[str] | None = None
        self._operations: list[str] | None = None
        self._keys: dict[str, tuple[bytearray, float]] = {}

    def __repr__(self) -> str:
        return f"<KmipProvider {self.config.address} key={self.config.key_uid!r}>"

    # -- connection ------------------------------------------------------------
    def _connect(self) -> tuple[ssl.SSLSocket, str]:
        host, port = self.config.host, self.config.port
        try:
            addresses = _checked_addresses(
                host,
                port,
                allow_private=self.config.allow_private,
                resolve=self._resolve,
                allowed_networks=self.config.allowed_networks,
            )
        except InvalidKmipConfig as exc:
            raise KmipConnectError(f"KMIP server {self.config.address}: {exc}") from None
        failures: list[str] = []
        for address in addresses:
            try:
                raw = socket.create_connection((address, port), timeout=self._timeout)
            except TimeoutError:
                failures.append(f"{address}: timed out after {self._timeout:g} s")
                continue
            except OSError as exc:
                failures.append(f"{address}: {exc.strerror or type(exc).__name__}")
                continue
            try:
                server_name = host[1:-1] if host.startswith("[") else host
                tls = self._tls.wrap_socket(raw, server_hostname=server_name)
            except ssl.SSLError as exc:
                raw.close()
                problem = _tls_problem(exc, host)
                raise KmipTlsError(
                    f"KMIP server {self.config.address}: {problem}", problem
                ) from None
            except OSError as exc:
                raw.close()
                failures.append(
                    f"{address}: the connection failed during the TLS handshake "
                    f"({exc.strerror or type(exc).__name__})"
                )
                continue
            tls.settimeout(self._timeout)
            return tls, address
        raise KmipConnectError(
            f"could not connect to the KMIP server {self.config.address}: " + "; ".join(failures)
        )

    def _open(self) -> _Connection:
        """The open connection, or a new one (caller holds the lock)."""
        conn = self._conn
        if conn is not None:
            idle = time.monotonic() - conn.last_used
            if idle > _IDLE_SECONDS or _closed_by_peer(conn.sock):
                self._drop()
            else:
                return conn
        holder: dict[str, str] = {}

        def connect() -> ssl.SSLSocket:
            sock, holder["peer"] = self._connect()
            return sock

        client = ProxyKmipClient(
            hostname=self.config.host,
            port=self.config.port,
            config_file="/dev/null",
            kmip_version=self._version or KMIPVersion.KMIP_1_2,
        )
        client.proxy = _Proxy(
            connect,
            host=self.config.host,
            port=self.config.port,
            username=self.config.username,
            password=self._password,
            kmip_version=self._version or KMIPVersion.KMIP_1_2,
        )
        # proxy.open() rather than client.open(), which logs each failure at ERROR.
        client.proxy.open()
        client._is_open = True
        conn = _Connection(client, client.proxy.socket, holder["peer"], time.monotonic())
        self._conn = conn
        if self._version is None:
            try:
                self._negotiate(conn)
            except BaseException:
                self._drop()
                raise
        return conn

    def _negotiate(self, conn: _Connection) -> None:
        """Pick the protocol version: the best both sides speak (first request on a connection)."""
        try:
            result = conn.client.proxy.discover_versions()
        except ssl.SSLError as exc:
            # Under TLS 1.3 the server checks our certificate after the handshake.
            problem = _tls_problem(exc, self.config.host)
            raise KmipTlsError(f"KMIP server {self.config.address}: {problem}", problem) from None
        except (OSError, EOFError, RequestLengthMismatch) as exc:
            raise KmipConnectError(
                f"the KMIP server {self.config.address} closed the connection after the TLS "
                f"handshake ({_transport_text(exc)}); it may not accept the client certificate"
            ) from None
        except Exception as exc:  # PyKMIP could not decode the answer
            raise KmipUnavailable(
                f"the KMIP server {self.config.address} answered DiscoverVersions with "
                f"something that could not be read ({type(exc).__name__})",
                "DiscoverVersions",
            ) from None
        if result.result_status.value == enums.ResultStatus.SUCCESS:
            offered = [(v.major, v.minor) for v in result.protocol_versions or []]
            self._offered = [f"{major}.{minor}" for major, minor in offered]
            spoken = [v for v in _VERSIONS if v in offered]
            version = _VERSIONS[spoken[0]] if spoken else KMIPVersion.KMIP_1_0
        else:
            # A KMIP 1.0 server has no DiscoverVersions.
            self._offered = None
            version = KMIPVersion.KMIP_1_0
        self._version = version
        conn.client.kmip_version = version

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.client.close()

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    def _call(
        self, operation: str, uid: str | None, fn: Callable[[Any], T], *, repeatable: bool = True
    ) -> T:
        """Run one KMIP operation on the shared connection, errors mapped onto base.py's."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                conn = self._open()
                try:
                    answer = fn(conn.client)
                except KmipOperationFailure as exc:
                    conn.last_used = time.monotonic()
                    raise self._failure(operation, uid, exc.reason, exc.message) from None
                except ssl.SSLError as exc:
                    self._drop()
                    problem = _tls_problem(exc, self.config.host)
                    raise KmipTlsError(
                        f"KMIP {operation} at {self.config.address}: {problem}", problem
                    ) from None
                except TimeoutError:
                    self._drop()
                    raise KmipUnavailable(
                        f"KMIP {operation} at {self.config.address} timed out after "
                        f"{self._timeout:g} s",
                        operation,
                    ) from None
                except (OSError, EOFError, RequestLengthMismatch) as exc:
                    self._drop()
                    if reused and repeatable and attempt == 1:
                        continue  # the server had closed a reused connection: once more
                    raise KmipUnavailable(
                        f"KMIP {operation} at {self.config.address} failed: the connection "
                        f"broke ({_transport_text(exc)})",
                        operation,
                    ) from None
                except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
                    # PyKMIP could not decode the answer: the connection's framing is unknown.
                    self._drop()
                    raise KmipUnavailable(
                        f"KMIP {operation} at {self.config.address}: the server's answer could "
                        f"not be read ({type(exc).__name__})",
                        operation,
                    ) from None
                conn.last_used = time.monotonic()
                return answer
        raise AssertionError("unreachable")

    def _failure(
        self, operation: str, uid: str | None, reason: Any, message: Any
    ) -> KeyProviderError:
        target = f" on key {uid}" if uid else ""
        text = f"the KMIP server refused {operation}{target}: {_reason_name(reason)}" + (
            f" ({_server_text(message)})" if _server_text(message) else ""
        )
        if reason in _DENIED_REASONS:
            return KmipAccessDenied(text, operation, reason)
        return KmipUnavailable(text, operation, reason)

    def _result(self, operation: str, result: Any) -> Any:
        """Raise for a KMIPProxy result (its lower-level calls do not raise)."""
        if result.result_status.value != enums.ResultStatus.SUCCESS:
            reason = result.result_reason.value if result.result_reason else None
            message = result.result_message.value if result.result_message else ""
            raise self._failure(operation, None, reason, message)
        return result

    # -- what the server offers -----------------------------------------------
    def server_info(self) -> tuple[list[str], list[str]]:
        """(protocol versions from DiscoverVersions, operations from Query), as names."""

        def discover(client: Any) -> Any:
            return client.proxy.discover_versions()

        def query(client: Any) -> Any:
            return client.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS])

        versions = self._result("DiscoverVersions", self._call("DiscoverVersions", None, discover))
        offered = [f"{v.major}.{v.minor}" for v in versions.protocol_versions or []]
        answer = self._result("Query", self._call("Query", None, query))
        operations = _operation_names(answer.operations or [])
        with self._lock:
            self._offered, self._operations = offered, operations
        return offered, operations

    def _query_operations(self) -> list[str]:
        with self._lock:
            if self._operations is not None:
                return self._operations

        def query(client: Any) -> Any:
            return client.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS])

        try:
            answer = self._result("Query", self._call("Query", None, query))
        except KmipUnavailable as exc:
            if exc.reason is None:
                raise  # the connection, not the server's answer
            answer = None  # a server without Query: the round trip tells what works
        operations = _operation_names(answer.operations or []) if answer else []
        with self._lock:
            self._operations = operations
        return operations

    def _server_side_crypto(self) -> bool:
        """Whether the server encrypts and decrypts (else: Get, and AES-GCM here).

        A server that lists no operations at all is assumed to (the round trip tells).
        """
        operations = self._query_operations()
        return not operations or {"Encrypt", "Decrypt"} <= set(operations)

    # -- keys --------------------------------------------------------------------
    def _create(self, name: str) -> str:
        uid = self._call(
            "Create",
            None,
            lambda c: c.create(enums.CryptographicAlgorithm.AES, 256, name=name),
            repeatable=False,
        )
        try:
            self._call("Activate", uid, lambda c: c.activate(uid), repeatable=False)
        except KeyProviderError:
            with contextlib.suppress(KeyProviderError):
                self._call("Destroy", uid, lambda c: c.destroy(uid), repeatable=False)
            raise
        return str(uid)

    def _retire(self, uid: str) -> None:
        """Revoke, then Destroy (refused while Active)."""
        reason = enums.RevocationReasonCode.CESSATION_OF_OPERATION
        self._call("Revoke", uid, lambda c: c.revoke(reason, uid), repeatable=False)
        self._call("Destroy", uid, lambda c: c.destroy(uid), repeatable=False)
        self._forget_key(uid)

    def create_key(self) -> str:
        """Create an AES-256 key named `config.key_name` for encrypt/decrypt, Activate it."""
        return self._create(self.config.key_name)

    def rotate_now(self) -> str | None:
        """A new key made the same way; the caller rewraps data keys under it."""
        return self._create(self.config.key_name)

    def prepare_enable(self) -> dict[str, str]:
        """Enable uses the configured key, or a new one made here (its uid is kept)."""
        return {"key_uid": self.config.key_uid or self.create_key()}

    def discard_prepared(self, prepared: dict[str, str]) -> None:
        """Enable was refused after `prepare_enable`: a key made for it goes (revoked and
        destroyed, nothing was ever wrapped under it); a configured key stays."""
        uid = prepared.get("key_uid")
        if uid and uid != self.config.key_uid:
            self._retire(uid)

    def pin_version(self, version: str) -> dict[str, str]:
        """A confirmed rotation: new wraps use the key `version`."""
        return {"key_uid": _check_text("version", version, what="key unique identifier")}

    def _state(self, uid: str) -> Any:
        def get_state(client: Any) -> Any:
            _, attributes = client.get_attributes(uid, ["State"])
            return attributes

        for attribute in self._call("GetAttributes", uid, get_state):
            if str(attribute.attribute_name.value) == "State":
                return attribute.attribute_value.value
        raise KmipUnavailable(f"the KMIP server did not report the state of key {uid}")

    def health(self) -> KeyHealth:
        uid = self.config.key_uid
        if uid is None:
            return KeyHealth(False, "", "no KMIP key has been created yet")
        try:
            state = self._state(uid)
        except KmipAccessDenied as exc:
            if exc.reason == enums.ResultReason.ITEM_NOT_FOUND:
                detail = (
                    f"key {uid} was not found on the KMIP server (destroyed, or not visible "
                    "to this client certificate)"
                )
            else:
                detail = str(exc)
            return KeyHealth(False, uid, detail)
        if state == enums.State.ACTIVE:
            return KeyHealth(True, uid, "active")
        return KeyHealth(False, uid, _state_detail(uid, state))

    def current_version(self) -> str:
        if self.config.key_uid is None:
            raise KeyMaterialInvalid("no KMIP key has been created yet: create one first")
        return self.config.key_uid

    def describe(self) -> KeyDescription:
        facts = {
            "Server": self.config.address,
            "Key unique identifier": self.config.key_uid or "not created yet",
            "Key name": self.config.key_name,
            "Client certificate": self._client_subject,
        }
        if self.config.username:
            facts["Username"] = self.config.username
        return KeyDescription(self.kind, "KMIP server key", facts)

    # -- wrapping ------------------------------------------------------------------
    def wrap(self, dek: bytes, context: Context) -> Wrapped:
        uid = self.current_version()
        return Wrapped(self._wrap_with(uid, dek, context), uid)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        try:
            uid = _check_text("version", version, what="key unique identifier")
        except InvalidKmipConfig as exc:
            raise KeyMaterialInvalid(f"not a KMIP key version: {exc}") from None
        return self._unwrap_with(uid, wrapped, context)

    def _wrap_with(self, uid: str, dek: bytes, context: Context) -> bytes:
        if not isinstance(dek, bytes | bytearray) or len(dek) != DEK_BYTES:
            raise KeyMaterialInvalid(f"a DEK to wrap is {DEK_BYTES} bytes")
        aad = _context_bytes(context)
        plain = bytes(dek)
        if not self._server_side_crypto():
            nonce = secrets.token_bytes(_NONCE)
            key = self._key_bytes(uid)
            return (
                bytes([_BLOB_LOCAL]) + nonce + AESGCM(key).encrypt(nonce, plain, _LOCAL_LABEL + aad)
            )
        iv = secrets.token_bytes(_IV)

        def encrypt(client: Any) -> Any:
            return client.encrypt(
                plain, uid=uid, cryptographic_parameters=_CBC, iv_counter_nonce=iv
            )

        ciphertext, server_iv = self._call("Encrypt", uid, encrypt)
        if server_iv is not None:
            iv = bytes(server_iv)  # a server may choose its own IV and return it
        ciphertext = bytes(ciphertext)
        if len(iv) != _IV or len(ciphertext) != _CBC_CIPHERTEXT:
            raise KmipUnavailable(
                f"KMIP Encrypt on key {uid} answered {len(ciphertext)} bytes with a "
                f"{len(iv)}-byte IV; AES-CBC with PKCS5 padding gives {_CBC_CIPHERTEXT} "
                f"bytes with a {_IV}-byte IV",
                "Encrypt",
            )
        return bytes([_BLOB_SERVER]) + iv + ciphertext + _tag(plain, aad, iv, ciphertext)

    def _unwrap_with(
        self, uid: str, wrapped: bytes, context: Context, *, confirm: bool = True
    ) -> bytes:
        if not isinstance(wrapped, bytes | bytearray) or not wrapped:
            raise KeyMaterialInvalid("a wrapped key is bytes")
        blob = bytes(wrapped)
        aad = _context_bytes(context)
        if blob[0] == _BLOB_LOCAL:
            if len(blob) != _LOCAL_BLOB:
                raise KeyMaterialInvalid(_TAMPERED)
            key = self._key_bytes(uid)
            try:
                return AESGCM(key).decrypt(
                    blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _LOCAL_LABEL + aad
                )
            except InvalidTag:
                raise KeyMaterialInvalid(_TAMPERED) from None
        if blob[0] != _BLOB_SERVER:
            raise KeyMaterialInvalid(f"unknown KMIP wrapped-key format {blob[0]}")
        if len(blob) != _SERVER_BLOB:
            raise KeyMaterialInvalid(_TAMPERED)
        iv = blob[1 : 1 + _IV]
        ciphertext = blob[1 + _IV : 1 + _IV + _CBC_CIPHERTEXT]
        tag = blob[1 + _IV + _CBC_CIPHERTEXT :]

        def decrypt(client: Any) -> Any:
            return client.decrypt(
                ciphertext, uid=uid, cryptographic_parameters=_CBC, iv_counter_nonce=iv
            )

        try:
            plain = bytes(self._call("Decrypt", uid, decrypt))
        except KmipUnavailable as exc:
            if confirm and exc.reason in _MAYBE_BAD_BLOB:
                self._confirm_key_works(uid)
                raise KeyMaterialInvalid(_TAMPERED) from None
            raise
        if len(plain) != DEK_BYTES or not hmac.compare_digest(
            _tag(plain, aad, iv, ciphertext), tag
        ):
            raise KeyMaterialInvalid(_TAMPERED)
        return plain

    def _confirm_key_works(self, uid: str) -> None:
        """A fresh round trip with `uid`: raises if the server or key is at fault."""
        probe = secrets.token_bytes(DEK_BYTES)
        blob = self._wrap_with(uid, probe, {})
        if self._unwrap_with(uid, blob, {}, confirm=False) != probe:
            raise KmipUnavailable(f"the KMIP server decrypted a probe under key {uid} wrongly")

    # -- keys fetched with Get (servers without Encrypt/Decrypt) --------------------
    def _key_bytes(self, uid: str) -> bytes:
        now = time.monotonic()
        with self._lock:
            cached = self._keys.get(uid)
            if cached is not None and cached[1] > now:
                return bytes(cached[0])
            self._forget_key(uid)
            state = self._state(uid)
            if state != enums.State.ACTIVE:
                raise KmipAccessDenied(_state_detail(uid, state), "Get", None)
            key = self._call("Get", uid, lambda c: c.get(uid))
            algorithm = getattr(key, "cryptographic_algorithm", None)
            value = getattr(key, "value", b"")
            if algorithm != enums.CryptographicAlgorithm.AES or len(value) != DEK_BYTES:
                raise KeyMaterialInvalid(f"KMIP key {uid} is not an AES-256 key")
            if self._key_cache_seconds > 0:
                self._keys[uid] = (bytearray(value), now + self._key_cache_seconds)
            return bytes(value)

    def _forget_key(self, uid: str) -> None:
        with self._lock:
            cached = self._keys.pop(uid, None)
            if cached is not None:
                cached[0][:] = bytes(len(cached[0]))  # best effort: zero our copy

    # -- Save and Test ---------------------------------------------------------------
    def run_checks(self, context: Context) -> list[CheckResult]:
        results: list[CheckResult] = []
        names = [CHECK_TLS, CHECK_VERSIONS, CHECK_OPERATIONS, CHECK_ROUND_TRIP]
        if self.config.key_uid is not None:
            names.append(CHECK_KEY_ACTIVE)

        def skip_rest(reason: str) -> list[CheckResult]:
            done = {r.name for r in results}
            return results + [
                CheckResult(name, False, f"not run: {reason}") for name in names if name not in done
            ]

        tls = self._check_tls()
        results.append(tls)
        if not tls.passed:
            return skip_rest("no TLS connection to the KMIP server")

        versions = self._check_versions()
        results.append(versions)
        if not versions.passed:
            return skip_rest("no KMIP protocol version in common")

        operations = self._check_operations()
        results.append(operations)
        if not operations.passed:
            return skip_rest("the server lacks operations Keyward needs")

        round_trip = self._check_round_trip(context)
        results.append(round_trip)
        if self.config.key_uid is not None:
            results.append(self._check_key_active())
        return results

    def _check_tls(self) -> CheckResult:
        with self._lock:
            self._drop()
            self._version = None  # negotiate again, as a new connection would
            try:
                conn = self._open()
            except KmipTlsError as exc:
                return CheckResult(CHECK_TLS, False, _sentence(exc.problem))
            except KeyProviderError as exc:
                return CheckResult(CHECK_TLS, False, _sentence(str(exc)))
            version = conn.sock.version() or "TLS"
            peer = conn.peer
        return CheckResult(
            CHECK_TLS,
            True,
            f"Connected to {self.config.address} ({peer}) with {version}; the server's "
            f"certificate was verified against your CA and for {self.config.host}, and the "
            f"server accepted the client certificate {self._client_subject}.",
        )

    def _check_versions(self) -> CheckResult:
        with self._lock:
            offered, version = self._offered, self._version
        spoken = _version_text(version)
        if offered is None:
            return CheckResult(
                CHECK_VERSIONS,
                True,
                f"The server did not answer DiscoverVersions; using KMIP {spoken}.",
            )
        if not offered:
            return CheckResult(
                CHECK_VERSIONS, False, "The server listed no KMIP protocol versions."
            )
        if not any(f"{major}.{minor}" in offered for major, minor in _VERSIONS):
            return CheckResult(
                CHECK_VERSIONS,
                False,
                f"The server offers KMIP {', '.join(offered)}; Keyward speaks KMIP 1.0 to 1.4. "
                "Enable one of those versions on the KMIP server.",
            )
        return CheckResult(
            CHECK_VERSIONS,
            True,
            f"The server offers KMIP {', '.join(offered)}; using KMIP {spoken}.",
        )

    def _check_operations(self) -> CheckResult:
        try:
            with self._lock:
                self._operations = None
            offered = self._query_operations()
        except KeyProviderError as exc:
            return CheckResult(CHECK_OPERATIONS, False, f"Query failed: {exc}.")
        if not offered:
            return CheckResult(
                CHECK_OPERATIONS,
                True,
                "The server did not list its operations; the round trip tests the ones "
                "Keyward uses.",
            )
        available = set(offered)
        missing = [op for op in _NEEDED_OPERATIONS if op not in available]
        server_side = {"Encrypt", "Decrypt"} <= available
        if not server_side and "Get" not in available:
            missing.append("Encrypt and Decrypt (or Get)")
        listed = ", ".join(offered)
        if missing:
            return CheckResult(
                CHECK_OPERATIONS,
                False,
                f"The server does not offer {', '.join(missing)} (it offers: {listed}). "
                "Enable them for this client on the KMIP server.",
            )
        how = (
            "keys stay on the server (Encrypt and Decrypt)"
            if server_side
            else "the server has no Encrypt/Decrypt, so the key is fetched with Get and "
            "used in memory only"
        )
        return CheckResult(CHECK_OPERATIONS, True, f"The server offers {listed}; {how}.")

    def _check_round_trip(self, context: Context) -> CheckResult:
        step = "Create"
        probe_uid: str | None = None
        try:
            probe_uid = self._call(
                "Create",
                None,
                lambda c: c.create(
                    enums.CryptographicAlgorithm.AES, 256, name=f"{self.config.key_name}-check"
                ),
                repeatable=False,
            )
            uid = str(probe_uid)
            step = "Activate"
            self._call("Activate", uid, lambda c: c.activate(uid), repeatable=False)
            step = "Encrypt" if self._server_side_crypto() else "Get"
            probe = secrets.token_bytes(DEK_BYTES)
            blob = self._wrap_with(uid, probe, context)
            step = "Decrypt" if self._server_side_crypto() else "Get"
            same = self._unwrap_with(uid, blob, context) == probe
            step = "Revoke and Destroy"
            self._retire(uid)
            probe_uid = None
        except KeyProviderError as exc:
            message = f"{step} failed: {exc}."
            if isinstance(exc, KmipAccessDenied):
                message += (
                    " Allow this client (its certificate and KMIP user) to create, activate, "
                    "use, revoke and destroy symmetric keys on the KMIP server."
                )
            if probe_uid is not None:
                message += f" The temporary key {probe_uid} may remain on the server."
                with contextlib.suppress(KeyProviderError):
                    self._retire(str(probe_uid))
            return CheckResult(CHECK_ROUND_TRIP, False, message)
        if not same:
            return CheckResult(
                CHECK_ROUND_TRIP, False, "The server decrypted the probe to different bytes."
            )
        where = "on the server" if self._server_side_crypto() else "in memory (fetched with Get)"
        return CheckResult(
            CHECK_ROUND_TRIP,
            True,
            "Created and activated a temporary AES-256 key, wrapped and unwrapped a 32-byte "
            f"probe with it {where} under the context, then revoked and destroyed it.",
        )

    def _check_key_active(self) -> CheckResult:
        try:
            health = self.health()
        except KeyProviderError as exc:
            return CheckResult(CHECK_KEY_ACTIVE, False, _sentence(str(exc)))
        if health.usable:
            return CheckResult(CHECK_KEY_ACTIVE, True, f"Key {health.version} is active.")
        return CheckResult(CHECK_KEY_ACTIVE, False, _sentence(health.detail))


_TAMPERED = "the wrapped key was not wrapped under this context or key, or was tampered with"

_STATE_ADVICE = {
    "PRE_ACTIVE": "is pre-active: activate it on the KMIP server",
    "DEACTIVATED": "is deactivated (revoked): it can no longer encrypt or decrypt",
    "COMPROMISED": "is marked compromised (revoked): it can no longer encrypt or decrypt",
    "DESTROYED": "was destroyed",
    "DESTROYED_COMPROMISED": "was destroyed",
}


def _state_detail(uid: str, state: Any) -> str:
    name = _reason_name(state)
    return f"key {uid} " + _STATE_ADVICE.get(name, f"is in state {name}, not Active")


def _version_text(version: KMIPVersion | None) -> str:
    for pair, value in _VERSIONS.items():
        if value == version:
            return f"{pair[0]}.{pair[1]}"
    return "1.2"


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _context_bytes(context: Context) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("an encryption context maps text to text")
    return encode_context(context)


def _tag(dek: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(dek, _WRAP_LABEL + aad + iv + ciphertext, hashlib.sha256).digest()


def _closed_by_peer(sock: ssl.SSLSocket) -> bool:
    """True when an idle connection has something to read: the server closed it (or alerted)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable) or sock.pending() > 0


def _transport_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
