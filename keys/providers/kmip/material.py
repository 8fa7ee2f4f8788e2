"""The uploaded TLS material: the server CA, client certificate, key and passphrase.

Checked before they are saved, each failure naming the upload to change.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from keys.providers.kmip.config import InvalidKmipMaterial
from keys.providers.kmip.transport import tls_context

_MAX_CA_PEM = 256 * 1024  # a bundle of a few CA certificates
_MAX_CERT_PEM = 64 * 1024  # a client certificate and its intermediates
_MAX_KEY_PEM = 32 * 1024
_MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class ClientMaterialInfo:
    """What the console shows about validated uploads: nothing secret."""

    subject: str
    issuer: str
    not_after: datetime
    fingerprint_sha256: str
    ca_subject: str


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
        certificates = x509.load_pem_x509_certificates(pem)
        # cryptography parses a certificate's parts when they are first used: a
        # damaged key, name or extension surfaces here, not in the checks below.
        for cert in certificates:
            cert.public_key()
            cert.extensions  # noqa: B018
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
    # A damaged version field raises InvalidVersion, which is not a ValueError.
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
        raise _material_error(
            field_name, "the PEM certificate could not be parsed (damaged or truncated?)"
        ) from None
    return certificates


def name_text(value: x509.Name) -> str:
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
                f"{name_text(cert.subject)} is not a CA certificate (basicConstraints CA:TRUE is "
                "missing): upload the certificate of the CA that issued the KMIP server's "
                "certificate, not the server's or a client certificate",
            )
        _check_dates("ca_cert", cert, now, f"the CA certificate {name_text(cert.subject)}")


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
            f"the private key does not match the client certificate {name_text(leaf.subject)}: "
            "upload the key that was generated with this certificate",
        )
    _check_dates("client_cert", leaf, when, "the client certificate")
    _check_client_usage(leaf)
    try:
        tls_context(ca_data, cert_data, key_data, secret)
    except ssl.SSLError as exc:
        raise _material_error(
            "client_key", f"OpenSSL refused the certificate and key ({exc.reason or exc})"
        ) from None
    return ClientMaterialInfo(
        subject=name_text(leaf.subject),
        issuer=name_text(leaf.issuer),
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=_fingerprint(leaf),
        ca_subject=name_text(cas[0].subject),
    )
