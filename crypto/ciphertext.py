"""The field ciphertext format. Framework-free.

Both versions share one layout, all integers big-endian:

    blob   = format (1 byte) | DEK id (8 bytes) | nonce (12 bytes, random)
             | AES-256-GCM ciphertext | tag (16 bytes)
    aad    = format | DEK id | len-prefixed tenant id | kind | field | record id

They differ in the AES-256-GCM key:

- Version 2 (0x02), what every encryption writes: the field key
  HKDF-SHA256(ikm=DEK, salt=None, info="keyward field key/2", length=32).
  The DEK is a key-derivation key only (one key, one purpose: NIST SP
  800-57 part 1, section 5.2); object segments and the providers' tag keys
  derive their own keys from it under other labels.
- Version 1 (0x01), read-only: the DEK itself. Existing data is under it;
  re-encrypting a tenant's data under a new DEK (DEK rotation) rewrites it
  as version 2, so it disappears with the DEKs it was written under.

The header is part of the associated data, so neither the DEK id nor the
version can be swapped: a version 1 blob relabelled 2 (or the reverse) is
opened with the other key and the other associated data, and fails. Tenant,
kind, field and record id are bound too, so a ciphertext copied to another
tenant, record or field fails to authenticate instead of decrypting to
something. Nonces are 96 random bits; a DEK (so its one field key) is retired
long before 2^32 uses (NIST SP 800-38D, section 8.3).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from operator import itemgetter

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 1  # read-only: the DEK itself is the AES-GCM key
FORMAT_V2 = 2  # the field key derived from the DEK
FORMAT_CURRENT = FORMAT_V2  # what every encryption writes
HEADER = struct.Struct(">BQ")
HEADER_SIZE = HEADER.size  # 9
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
BODY_AT = HEADER_SIZE + NONCE_SIZE  # where a blob's ciphertext (and tag) begins
# A blob's header, nonce and ciphertext with its tag, for slicing every blob of a
# page in C (map over them) rather than one Python slice per blob.
HEAD_OF = itemgetter(slice(0, HEADER_SIZE))
NONCE_OF = itemgetter(slice(HEADER_SIZE, BODY_AT))
BODY_OF = itemgetter(slice(BODY_AT, None))

# Distinct from every other label anything derives from a DEK: the object
# segment subkeys' ("keyward object v1 segment key", crypto.segments) and the
# key providers' tag keys ("keyward azure wrap tag v2", "keyward kmip wrap tag
# v3"). The label is what separates keys derived from one secret (RFC 5869,
# section 3.2): the tag keys use no salt either, so a shared label would make
# the field key and a tag key the same key; the segment subkeys have a random
# salt per object, but separation should not rest on that salt never being
# all zeros (what no salt means). The format is in the label so that a later
# format derives a fresh key.
FIELD_KEY_INFO = b"keyward field key/2"

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


def field_key(dek: bytes) -> bytes:
    """The AES-256-GCM key of format 2 ciphertexts under `dek` (HKDF-SHA256)."""
    if len(dek) != 32:
        raise ValueError("a DEK is 32 bytes (AES-256)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=FIELD_KEY_INFO).derive(dek)


class FieldKeys:
    """The AES-GCM keys of one DEK for field ciphertexts, built once when it is unwrapped.

    `sealing` is the format 2 field key, the only one that encrypts;
    `opening` maps each readable format byte to its key.

    The format 1 key (the DEK itself) is built here too rather than on the
    first format 1 blob: building it later would mean keeping the DEK's
    bytes in the entry anyway (they cannot be unwrapped again without
    another key store call), so deferring it would save no exposure, only
    one AESGCM construction per unwrap, and it would put a "built yet?"
    branch and a lock on the read path. Nothing but `opening[FORMAT_V1]`
    hands it out, and nothing encrypts with it.
    """

    __slots__ = ("opening", "sealing")

    def __init__(self, dek: bytes) -> None:
        self.sealing = AESGCM(field_key(dek))
        self.opening: dict[int, AESGCM] = {FORMAT_V2: self.sealing, FORMAT_V1: AESGCM(dek)}

    def by_header(self, dek_id: int) -> dict[bytes, AESGCM]:
        """The key for each header a readable ciphertext under this DEK (`dek_id`) can carry.

        For loops over many blobs: looking a blob's header up checks its format
        and its DEK id and picks its key in one step.
        """
        return {HEADER.pack(version, dek_id): aead for version, aead in self.opening.items()}

    def __repr__(self) -> str:
        return "<FieldKeys>"


def header(dek_id: int) -> bytes:
    """The header of a new ciphertext: always the current format."""
    return HEADER.pack(FORMAT_CURRENT, dek_id)


def parse_header(blob: bytes) -> tuple[int, int]:
    """(format, DEK id) of a ciphertext, after checking that it can be one of ours."""
    if len(blob) < OVERHEAD:
        raise CiphertextMalformed(f"ciphertext is truncated ({len(blob)} bytes)")
    version, dek_id = HEADER.unpack_from(blob)
    if version != FORMAT_V2 and version != FORMAT_V1:
        raise CiphertextMalformed(f"unknown ciphertext format {version}")
    return version, int(dek_id)


def dek_id_of(blob: bytes) -> int:
    """The DEK a ciphertext names, after checking that it can be one of ours."""
    return parse_header(blob)[1]


class NoncePool:
    """Random 96-bit nonces drawn from the OS in blocks of 1024.

    Taking one is `next()` on a list iterator, atomic under the GIL, so
    threads never share a nonce; the per-call path is
    `next(NONCES.it, None) or NONCES.refill()`, with no Python call until a
    block runs out. A forked child starts a fresh block (`reset`): it must
    never replay the parent's nonces under the same keys.
    """

    BLOCK = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.it: Iterator[bytes] = iter(())

    def refill(self) -> bytes:
        """A new block; returns its first nonce. Two threads refilling at once
        each draw their own block: the one replaced is never read again."""
        with self._lock:
            nonces = random_nonces(self.BLOCK)
            self.it = iter(nonces[1:])
            return nonces[0]

    def take(self) -> bytes:
        return next(self.it, None) or self.refill()

    def reset(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at fork()
        self.it = iter(())


NONCES = NoncePool()
os.register_at_fork(after_in_child=NONCES.reset)


def next_nonce() -> bytes:
    return NONCES.take()


def random_nonces(n: int) -> list[bytes]:
    """`n` random 96-bit nonces from one read of the OS's generator (for a batch),
    cut apart by one struct call (the format is cached by the struct module)."""
    return list(struct.unpack(f"{NONCE_SIZE}s" * n, os.urandom(NONCE_SIZE * n)))


def binding_prefix(tenant_id: str, kind: str, field: str) -> bytes:
    """The part of `binding()` shared by every record of a (tenant, kind, field)."""
    return _lp(tenant_id) + _lp(kind) + _lp(field)


def seal(keys: FieldKeys, head: bytes, plaintext: bytes, bound: bytes) -> bytes:
    """Encrypt one value (format 2); `head` from `header()`, `bound` from `binding()`."""
    nonce = next_nonce()
    return head + nonce + keys.sealing.encrypt(nonce, plaintext, head + bound)


def open_(keys: FieldKeys, blob: bytes, bound: bytes) -> bytes:
    """Decrypt one value of either format under the same binding, with its format's key."""
    # Length and format first: a short blob is malformed, not unauthentic.
    version, _dek_id = parse_header(blob)
    try:
        return keys.opening[version].decrypt(
            blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
            blob[HEADER_SIZE + NONCE_SIZE :],
            blob[:HEADER_SIZE] + bound,
        )
    except InvalidTag:
        raise CiphertextUnauthentic(UNAUTHENTIC) from None
