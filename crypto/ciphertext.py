"""The field ciphertext format. Framework-free.

Version 1, all integers big-endian:

    blob   = format (1 byte, 0x01) | DEK id (8 bytes) | nonce (12 bytes, random)
             | AES-256-GCM ciphertext | tag (16 bytes)
    aad    = format | DEK id | len-prefixed tenant id | kind | field | record id

The header is part of the associated data, so the DEK id cannot be swapped;
tenant, kind, field and record id are too, so a ciphertext copied to another
tenant, record or field fails to authenticate instead of decrypting to
something. Nonces are 96 random bits; a DEK is retired long before 2^32 uses
(NIST SP 800-38D, section 8.3).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_V1 = 1
HEADER = struct.Struct(">BQ")
HEADER_SIZE = HEADER.size  # 9
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE


UNAUTHENTIC = (
    "ciphertext does not authenticate: it was altered, or it belongs to another "
    "tenant, record or field"
)


class CiphertextError(ValueError):
    """A ciphertext cannot be decrypted. Never carries plaintext or key bytes."""


class CiphertextMalformed(CiphertextError):
    pass


class CiphertextUnauthentic(CiphertextError):
    pass


class UnknownDataKey(CiphertextError):
    pass


def _lp(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def binding(tenant_id: str, kind: str, field: str, record_id: str) -> bytes:
    """The associated data after the header: what a ciphertext belongs to."""
    return _lp(tenant_id) + _lp(kind) + _lp(field) + _lp(record_id)


def header(dek_id: int) -> bytes:
    return HEADER.pack(FORMAT_V1, dek_id)


def dek_id_of(blob: bytes) -> int:
    """The DEK a ciphertext names, after checking that it can be one of ours."""
    if len(blob) < OVERHEAD:
        raise CiphertextMalformed(f"ciphertext is truncated ({len(blob)} bytes)")
    version, dek_id = HEADER.unpack_from(blob)
    if version != FORMAT_V1:
        raise CiphertextMalformed(f"unknown ciphertext format {version}")
    return int(dek_id)


class _Nonces:
    """Random 96-bit nonces drawn from the OS in blocks of 1024.

    Taking one is `next()` on a list iterator, atomic under the GIL, so
    threads never share a nonce. A forked child starts a fresh block: it must
    never replay the parent's nonces under the same keys.
    """

    BLOCK = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._it: Iterator[bytes] = iter(())

    def _refill(self) -> None:
        with self._lock:
            buffer = os.urandom(NONCE_SIZE * self.BLOCK)
            self._it = iter([buffer[i : i + NONCE_SIZE] for i in range(0, len(buffer), NONCE_SIZE)])

    def take(self) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            self._refill()
            return next(self._it)


_nonces = _Nonces()


def _reset_nonces_in_child() -> None:
    global _nonces
    _nonces = _Nonces()


os.register_at_fork(after_in_child=_reset_nonces_in_child)


def next_nonce() -> bytes:
    return _nonces.take()


def binding_prefix(tenant_id: str, kind: str, field: str) -> bytes:
    """The part of `binding()` shared by every record of a (tenant, kind, field)."""
    return _lp(tenant_id) + _lp(kind) + _lp(field)


def seal(aead: AESGCM, head: bytes, plaintext: bytes, bound: bytes) -> bytes:
    """Encrypt one value; `head` from `header()`, `bound` from `binding()`."""
    nonce = next_nonce()
    return head + nonce + aead.encrypt(nonce, plaintext, head + bound)


def open_(aead: AESGCM, blob: bytes, bound: bytes) -> bytes:
    """Decrypt one value sealed by `seal` under the same binding."""
    dek_id_of(blob)  # length and format first: a short blob is malformed, not unauthentic
    try:
        return aead.decrypt(
            blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
            blob[HEADER_SIZE + NONCE_SIZE :],
            blob[:HEADER_SIZE] + bound,
        )
    except InvalidTag:
        raise CiphertextUnauthentic(UNAUTHENTIC) from None
