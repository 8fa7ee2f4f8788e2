"""Uploading a customer's own key, wrapped ("BYOK" import), without Django.

The flow follows the usual cloud KMS import (AWS KMS "import key material"):

1. Keyward creates an import: a fresh RSA-4096 wrapping key pair
   (`new_wrapping_key`), an import token bound to it (`issue_token`) and a
   README (`import_readme`). The customer downloads `WrappingPublicKey.bin`
   (DER), `WrappingPublicKey.pem`, `ImportToken.bin` and `README.txt`
   (`KIT_FILES`).
2. The customer generates a 256-bit key and wraps it with RSAES-OAEP-SHA-256
   using plain `openssl` (the README gives the exact commands), producing
   `CustomerEncryptionKey.bin`, and computes the key check value (KCV).
3. The customer uploads `CustomerEncryptionKey.bin` with `ImportToken.bin`.
   Keyward checks the token (`verify_token`), unwraps the key with the
   import's private key (`unwrap_uploaded_key`), refuses wrong-size or
   trivially weak keys (`check_key_material`) and shows the KCV
   (`key_check_value`) so the customer can compare it with their own.

Every error a customer can cause is a subclass of `KeyImportError`
(a `ValueError`) with a message the customer can act on. No message ever
contains key material. Programming errors (a naive datetime, a short token
secret) raise plain `ValueError`/`TypeError` instead.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import textwrap
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

WRAPPING_KEY_BITS = 4096
WRAPPED_KEY_BYTES = WRAPPING_KEY_BITS // 8  # an RSA-4096 ciphertext is exactly 512 bytes
KEY_BYTES = 32  # AES-256
MIN_DISTINCT_BYTES = 12
MAX_PATTERN_PERIOD = 8

MAX_TOKEN_BYTES = 4096
MAX_TOKEN_FIELD_BYTES = 1024
MIN_TOKEN_SECRET_BYTES = 16
DEFAULT_TOKEN_TTL = timedelta(hours=24)

_TOKEN_MAGIC = b"KWIT"
_TOKEN_FORMAT = 1
_TOKEN_MAC_LABEL = b"keyward-import-token\x00"
_MAC_BYTES = 32
_FINGERPRINT_BYTES = 32
_HEADER_BYTES = len(_TOKEN_MAGIC) + 1 + 8 + 8 + _FINGERPRINT_BYTES
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_GENERATE_HINT = "generate a new key with: openssl rand -out CustomerKey.bin 32"


# -- errors --------------------------------------------------------------------------


class KeyImportError(ValueError):
    """Base of every error an upload can cause; the message tells the customer what to do."""


class InvalidImportToken(KeyImportError):
    """ImportToken.bin cannot be used for this upload."""


class TokenMalformed(InvalidImportToken):
    """Not a Keyward import token, or a damaged one."""


class TokenForged(InvalidImportToken):
    """The token's signature does not match: it was altered or not issued by Keyward."""


class TokenExpired(InvalidImportToken):
    """The token's validity period is over."""


class TokenForeign(InvalidImportToken):
    """The token was issued to another tenant."""


class TokenWrongKey(InvalidImportToken):
    """The token was issued for another wrapping key (another import)."""


class InvalidKeyBlob(KeyImportError):
    """CustomerEncryptionKey.bin is not a key wrapped with this import's public key."""


class InvalidKeyMaterial(KeyImportError):
    """The unwrapped key is not a 256-bit key."""


class WeakKeyMaterial(InvalidKeyMaterial):
    """The unwrapped key has the right size but is obviously not random."""


# -- wrapping key --------------------------------------------------------------------


@dataclass(frozen=True)
class WrappingKey:
    """An import's RSA-4096 key pair.

    `private_pem` is unencrypted PKCS#8: store it only encrypted (wrapped under
    the root key) and destroy it once the import is used or expired.
    """

    private_pem: bytes = field(repr=False)
    public_der: bytes = field(repr=False)
    public_pem: bytes = field(repr=False)
    fingerprint: str

    def __repr__(self) -> str:
        return f"WrappingKey(RSA-{WRAPPING_KEY_BITS}, fingerprint={self.fingerprint!r})"


def public_key_fingerprint(public_der: bytes) -> str:
    """Hex SHA-256 of a SubjectPublicKeyInfo DER (the bytes of WrappingPublicKey.bin)."""
    return hashlib.sha256(public_der).hexdigest()


def new_wrapping_key() -> WrappingKey:
    """A fresh RSA-4096 key pair (takes about a second)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=WRAPPING_KEY_BITS)
    public = private.public_key()
    public_der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return WrappingKey(
        private_pem=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_der=public_der,
        public_pem=public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        fingerprint=public_key_fingerprint(public_der),
    )


# -- import tokens -------------------------------------------------------------------


@dataclass(frozen=True)
class TokenClaims:
    """What a verified import token says. Times are timezone-aware UTC."""

    tenant_id: str
    import_id: str
    fingerprint: str
    issued_at: datetime
    expires_at: datetime


def format_time(moment: datetime) -> str:
    """The way times appear in messages and in README.txt: '2025-06-01 12:00:00 UTC'."""
    return f"{_aware(moment, 'moment').astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a datetime")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_TOKEN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_TOKEN_SECRET_BYTES} bytes")


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _TOKEN_MAC_LABEL + body, hashlib.sha256).digest()


def _encode_field(value: str, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    raw = value.encode()
    if len(raw) > MAX_TOKEN_FIELD_BYTES:
        raise ValueError(f"{name} is longer than {MAX_TOKEN_FIELD_BYTES} bytes")
    return len(raw).to_bytes(2, "big") + raw


def issue_token(
    secret: bytes,
    *,
    tenant_id: str,
    import_id: str,
    public_der: bytes,
    now: datetime,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
) -> bytes:
    """ImportToken.bin for one import: binds tenant, import, wrapping key and validity.

    Layout (version 1), all integers big-endian:

        b"KWIT" | 0x01 | issued_at (int64 µs since the Unix epoch) | expires_at (int64 µs)
        | SHA-256 of public_der (32) | len (2) tenant_id (UTF-8) | len (2) import_id (UTF-8)
        | HMAC-SHA-256(secret, b"keyward-import-token\\0" | everything before) (32)

    The expiry is exactly `now + ttl`, so the README can show the same time.
    """
    _check_secret(secret)
    now = _aware(now, "now")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    body = (
        _TOKEN_MAGIC
        + bytes([_TOKEN_FORMAT])
        + _micros(now).to_bytes(8, "big", signed=True)
        + _micros(now + ttl).to_bytes(8, "big", signed=True)
        + hashlib.sha256(public_der).digest()
        + _encode_field(tenant_id, "tenant_id")
        + _encode_field(import_id, "import_id")
    )
    return body + _mac(secret, body)


_MALFORMED = (
    "this file is not a Keyward import token, or it is damaged: upload the "
    "ImportToken.bin that came in the same download as WrappingPublicKey.bin, unchanged"
)


def _parse_token(token: bytes) -> tuple[bytes, bytes, int, int, bytes, str, str]:
    """Split a token into (body, mac, issued, expires, fingerprint, tenant, import id)."""
    if len(token) < _HEADER_BYTES + 2 + 2 + _MAC_BYTES or not token.startswith(_TOKEN_MAGIC):
        raise TokenMalformed(_MALFORMED)
    if token[4] != _TOKEN_FORMAT:
        raise TokenMalformed(
            f"this import token has format version {token[4]}, which this Keyward does not "
            "know: download new import parameters"
        )
    issued = int.from_bytes(token[5:13], "big", signed=True)
    expires = int.from_bytes(token[13:21], "big", signed=True)
    fingerprint = token[21:_HEADER_BYTES]
    offset = _HEADER_BYTES
    fields: list[str] = []
    for _ in range(2):
        if offset + 2 > len(token):
            raise TokenMalformed(_MALFORMED)
        size = int.from_bytes(token[offset : offset + 2], "big")
        offset += 2
        if size == 0 or size > MAX_TOKEN_FIELD_BYTES or offset + size > len(token):
            raise TokenMalformed(_MALFORMED)
        try:
            fields.append(token[offset : offset + size].decode())
        except UnicodeDecodeError:
            raise TokenMalformed(_MALFORMED) from None
        offset += size
    if offset + _MAC_BYTES != len(token):
        raise TokenMalformed(_MALFORMED)
    return token[:offset], token[offset:], issued, expires, fingerprint, fields[0], fields[1]


def verify_token(
    secret: bytes, token: bytes, *, tenant_id: str, public_der: bytes, now: datetime
) -> TokenClaims:
    """Check an uploaded ImportToken.bin; return its claims or raise `InvalidImportToken`.

    Checks, in order: size (at most 4 KiB, before any parsing), structure,
    signature (constant-time HMAC comparison), tenant, wrapping key, expiry.

    Single use is NOT enforced here: the caller must atomically mark
    `claims.import_id` as used in its database (and check it is the import the
    upload is for) before accepting the key, and refuse a token whose import
    was already used.
    """
    _check_secret(secret)
    now = _aware(now, "now")
    if isinstance(token, bytearray | memoryview):
        token = bytes(token)
    if not isinstance(token, bytes):
        raise TokenMalformed(_MALFORMED)
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenMalformed(
            f"this file is {len(token)} bytes; a Keyward import token is at most "
            f"{MAX_TOKEN_BYTES} bytes: upload the ImportToken.bin from the import download"
        )
    body, mac, issued, expires, fingerprint, token_tenant, import_id = _parse_token(token)
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise TokenForged(
            "this import token's signature does not match: it was altered or was not "
            "issued by Keyward; upload the unmodified ImportToken.bin, or download new "
            "import parameters"
        )
    try:
        issued_at = _EPOCH + issued * _MICROSECOND
        expires_at = _EPOCH + expires * _MICROSECOND
    except OverflowError:
        raise TokenMalformed(_MALFORMED) from None
    if not hmac.compare_digest(token_tenant.encode(), tenant_id.encode()):
        raise TokenForeign(
            "this import token belongs to another tenant: download import parameters "
            "from this tenant's console and upload that ImportToken.bin"
        )
    if not hmac.compare_digest(fingerprint, hashlib.sha256(public_der).digest()):
        raise TokenWrongKey(
            "this import token was not issued for this import's wrapping key: upload the "
            "ImportToken.bin from the same download as the WrappingPublicKey.bin you "
            "wrapped the key with"
        )
    if now >= expires_at:
        raise TokenExpired(
            f"this import token expired at {format_time(expires_at)}; download new import "
            "parameters, wrap your key again with the new WrappingPublicKey.bin and upload "
            "it with the new ImportToken.bin"
        )
    return TokenClaims(
        tenant_id=token_tenant,
        import_id=import_id,
        fingerprint=fingerprint.hex(),
        issued_at=issued_at,
        expires_at=expires_at,
    )


# -- the uploaded key ----------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def unwrap_uploaded_key(private_pem: bytes, blob: bytes) -> bytes:
    """Decrypt CustomerEncryptionKey.bin (RSAES-OAEP, SHA-256, MGF1-SHA-256, no label).

    The size is checked before any RSA operation, so a huge upload costs nothing.
    The result is NOT checked: pass it to `check_key_material`.
    """
    size = len(blob)
    if size != WRAPPED_KEY_BYTES:
        raise InvalidKeyBlob(
            f"expected a {WRAPPED_KEY_BYTES}-byte RSA-{WRAPPING_KEY_BITS} ciphertext, got "
            f"{_plural(size, 'byte')}: upload the CustomerEncryptionKey.bin produced by step 2 "
            "of README.txt"
        )
    private = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(private, rsa.RSAPrivateKey) or private.key_size != WRAPPING_KEY_BITS:
        raise TypeError(f"the import's private key is not an RSA-{WRAPPING_KEY_BITS} key")
    try:
        return private.decrypt(
            bytes(blob),
            padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            ),
        )
    except ValueError:
        raise InvalidKeyBlob(
            "could not unwrap: the key was not wrapped with this import's public key, with "
            "RSAES-OAEP SHA-256, or the file is damaged"
        ) from None


def _pattern_period(key: bytes) -> int | None:
    for period in range(1, MAX_PATTERN_PERIOD + 1):
        if all(key[i] == key[i % period] for i in range(len(key))):
            return period
    return None


def check_key_material(key: bytes) -> None:
    """Refuse anything but a 32-byte key that looks random.

    Refused: another length; all zero; one byte value repeated; a pattern
    repeating every 8 bytes or fewer; a constant step (00 01 02 ...); fewer
    than 12 distinct byte values; only printable ASCII (a passphrase or a hex
    string rather than raw random bytes). A random key fails any of these with
    probability below 1e-13 (printable ASCII dominates: (95/256)^32).
    """
    if len(key) != KEY_BYTES:
        raise InvalidKeyMaterial(
            f"the unwrapped key is {_plural(len(key), 'byte')}; an AES-256 key is "
            f"{KEY_BYTES} bytes: {_GENERATE_HINT}"
        )
    advice = f"; {_GENERATE_HINT}, wrap and upload it again"
    if not any(key):
        raise WeakKeyMaterial("the key is all zero bytes" + advice)
    period = _pattern_period(key)
    if period == 1:
        raise WeakKeyMaterial("the key is a single byte value repeated" + advice)
    if period is not None:
        raise WeakKeyMaterial(f"the key is a {period}-byte pattern repeated" + advice)
    steps = {(key[i + 1] - key[i]) % 256 for i in range(len(key) - 1)}
    if len(steps) == 1:
        raise WeakKeyMaterial("the key is a counting sequence (each byte a fixed step on)" + advice)
    distinct = len(set(key))
    if distinct < MIN_DISTINCT_BYTES:
        raise WeakKeyMaterial(
            f"the key uses only {distinct} distinct byte values (a random key uses about 30)"
            + advice
        )
    if all(0x20 <= b < 0x7F for b in key):
        raise WeakKeyMaterial(
            "the key is printable text (a passphrase or a hex string), not 32 random bytes" + advice
        )


KCV_BYTES = 5


def key_check_value(key: bytes) -> str:
    """The AES key check value as ANSI X9.24-1-2017 defines it: the leftmost 5 bytes
    of AES-CMAC(key, 16 zero bytes), in uppercase hex.

    Not the older AES-ECB(key, 0^128): that block is the GHASH subkey AES-GCM
    derives from the same key (SP 800-38D 6.4), and 3 bytes of it collide by
    chance one key in 16 million. The KCV lets a person compare two keys; it is
    never a key's identity (two keys can share one).
    """
    if len(key) != KEY_BYTES:
        raise InvalidKeyMaterial(
            f"the key is {_plural(len(key), 'byte')}; an AES-256 key is {KEY_BYTES} bytes"
        )
    mac = CMAC(algorithms.AES(key))
    mac.update(bytes(16))
    return mac.finalize()[:KCV_BYTES].hex().upper()


# -- README.txt ----------------------------------------------------------------------

README_WIDTH = 80
_TENANT_NAME_MAX = 60

# The files of an import download, as README.txt lists them (the zip must hold
# exactly these).
KIT_FILES: tuple[tuple[str, str], ...] = (
    ("WrappingPublicKey.bin", "the RSA-4096 public key (DER) to wrap your key with"),
    ("WrappingPublicKey.pem", "the same public key (PEM), for tools that want PEM"),
    ("ImportToken.bin", "the import token to upload with the wrapped key"),
    ("README.txt", "this file"),
)

_STEP_COMMANDS: dict[int, list[str]] = {
    1: [
        "umask 077",
        "openssl rand -out CustomerKey.bin 32",
    ],
    2: [
        "openssl pkeyutl -encrypt -pubin -keyform DER -inkey WrappingPublicKey.bin \\",
        "  -in CustomerKey.bin -out CustomerEncryptionKey.bin \\",
        "  -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 \\",
        "  -pkeyopt rsa_mgf1_md:sha256",
    ],
    3: [
        "head -c 16 /dev/zero \\",
        "  | openssl mac -cipher AES-256-CBC \\",
        "      -macopt \"hexkey:$(od -An -tx1 -v CustomerKey.bin | tr -d ' \\n')\" \\",
        "      CMAC \\",
        "  | head -c 10; echo",
    ],
    5: [
        "rm CustomerKey.bin",
    ],
}


def _clean_name(name: str) -> str:
    """A tenant name safe to print in a text file: one line, no control characters."""
    printable = "".join(
        " " if unicodedata.category(ch).startswith(("C", "Z")) else ch for ch in name
    )
    cleaned = re.sub(r" +", " ", printable).strip() or "your organisation"
    if len(cleaned) > _TENANT_NAME_MAX:
        cleaned = cleaned[: _TENANT_NAME_MAX - 3].rstrip() + "..."
    return cleaned


def _paragraph(text: str) -> str:
    return textwrap.fill(
        text, width=README_WIDTH - 2, break_long_words=False, break_on_hyphens=False
    )


def _commands(step: int) -> str:
    return "\n".join("    " + line for line in _STEP_COMMANDS[step])


def import_readme(*, tenant_name: str, expires_at: datetime, max_upload_bytes: int) -> str:
    """README.txt for an import download: exact shell commands, plain text, 80 columns.

    Structure (relied on by tests and safe to parse): each step starts with a
    line "Step N. <title>" at column 0; its shell commands are the lines
    indented by exactly four or more spaces; every other line is at column 0
    or indented by two spaces. Continuation lines end with a backslash.
    """
    until = format_time(expires_at)
    name = _clean_name(tenant_name)
    title = "Keyward: import your own key (BYOK)"
    sections = [
        f"{title}\n{'=' * len(title)}\n\nFor: {name}",
        _paragraph(
            "You are giving Keyward a 256-bit key (AES-256) that you generate and keep. "
            "Keyward encrypts your data keys with it. You generate the key on your own "
            "machine, wrap (encrypt) it with Keyward's public key for this import, and "
            "upload only the wrapped key. Your key never travels in the clear."
        ),
        "This download contains:\n\n"
        + "\n".join(f"  {name:<22} {what}" for name, what in KIT_FILES),
        _paragraph(
            f"The import token is valid until {until} and can be used for a single "
            "upload. After that, download new import parameters from the Keyward "
            "console and start again."
        ),
        _paragraph(
            "You need a POSIX shell (Linux, macOS, WSL) and OpenSSL 3: `openssl version` "
            'must print "OpenSSL 3". The LibreSSL that macOS installs as openssl may not '
            "support these options; install OpenSSL 3 first (for example with Homebrew)."
        ),
        _paragraph(
            "Run the commands in a directory that holds WrappingPublicKey.bin, on a "
            "machine you trust. Commands are indented by four spaces; copy each one "
            "exactly as shown (lines ending with a backslash continue on the next line)."
        ),
        "Step 1. Generate your key into CustomerKey.bin",
        _paragraph(
            "This creates 32 random bytes, readable only by you. CustomerKey.bin is your "
            "key in the clear: never send it to anyone, including Keyward support."
        ),
        _commands(1),
        "Step 2. Wrap the key into CustomerEncryptionKey.bin",
        _paragraph(
            "This encrypts CustomerKey.bin with WrappingPublicKey.bin using RSAES-OAEP "
            "with SHA-256 (and MGF1 with SHA-256). CustomerEncryptionKey.bin is always "
            "exactly 512 bytes."
        ),
        _commands(2),
        "Step 3. Compute the key check value (KCV)",
        _paragraph(
            "This prints ten hexadecimal digits computed from your key (the first 5 bytes "
            "of AES-CMAC of 16 zero bytes, as ANSI X9.24-1 defines the key check value). "
            "Write them down: after the upload, Keyward "
            "shows the KCV of the key it received, and the two must be equal. If they "
            "differ, Keyward did not receive the key in CustomerKey.bin: revoke the "
            "uploaded key and start again. The KCV does not reveal your key."
        ),
        _commands(3),
        "Step 4. Upload",
        _paragraph(
            "In the Keyward console, upload these two files together: "
            "CustomerEncryptionKey.bin (the wrapped key) and ImportToken.bin (the token from "
            f"this download). Each file may be at most {max_upload_bytes} bytes. Upload them "
            f"before {until}; the token works once. Check that the KCV Keyward shows equals "
            "the one from step 3."
        ),
        "Step 5. Keep CustomerKey.bin safe, then remove it",
        _paragraph(
            "Store CustomerKey.bin in your own key store (an HSM, a key vault or an "
            "offline backup) before you remove it. Keyward cannot give it back to you: it "
            "keeps only an encrypted copy, which it destroys when you revoke the key. To "
            "restore access after a revoke you must upload the same key again (download "
            "new import parameters and repeat steps 2 to 4 with your stored "
            "CustomerKey.bin); if you have lost it, your data cannot be recovered by "
            "anyone. Once the key is stored safely, remove it from this machine (rm does "
            "not overwrite the disk, so prefer working on an encrypted disk):"
        ),
        _commands(5),
        _paragraph(
            "CustomerEncryptionKey.bin, ImportToken.bin, WrappingPublicKey.bin and "
            "WrappingPublicKey.pem are not secret and can be deleted after the upload."
        ),
    ]
    return "\n\n".join(sections) + "\n"
