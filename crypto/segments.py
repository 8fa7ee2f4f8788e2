"""The object ciphertext format: a blob as a stream of AES-256-GCM segments. Framework-free.

An object of any size is encrypted and decrypted one segment (64 KiB of
plaintext by default) at a time, so neither side ever holds it whole.

Version 1, all integers big-endian:

    object  = header | segment 0 | segment 1 | ... | segment n (final)
    header  = magic "KWOB" (4) | format (1 byte, 0x01) | segment size (4)
              | DEK id (8) | salt (32 random bytes)                  = 49 bytes
    segment = AES-256-GCM ciphertext | tag (16)

Every segment but the last holds exactly `segment size` bytes of plaintext;
the final one holds fewer (0 to segment size - 1), so an empty object is one
empty final segment, and an object whose size is a multiple of the segment
size ends with an empty final segment too. That lets both sides know where a
segment ends without looking ahead:

    ciphertext size = 49 + (n // S) * (S + 16) + (n % S) + 16

Keys and nonces:

1. The DEK is never used on segments directly. Each object gets a subkey:
   HKDF-SHA256(ikm=DEK, salt=the header's 32 random bytes, info="keyward object
   v1 segment key", length=32).
2. The nonce of segment i is i as an 11-byte integer followed by one byte, 1
   for the final segment and 0 otherwise (the STREAM construction of Hoang,
   Reyhanitabar, Rogaway and Vizar, 2015).
3. The associated data of segment i is SHA-256(len-prefixed header |
   len-prefixed binding) | i (8 bytes) | final flag (1 byte). The binding is
   the caller's description of where the object belongs (tenant, object key),
   so a ciphertext copied to another key or tenant does not authenticate.

Nonce bound: within one object, nonces are distinct by construction (one
index, one segment; an object has at most 2^32 segments). Across objects the
subkeys differ unless two objects draw the same 256-bit salt under one DEK:
after 2^48 objects that chance is below 2^-160. So no (key, nonce) pair
repeats, and objects do not spend the DEK's random-nonce budget (the 2^32
messages of NIST SP 800-38D, section 8.3) that field ciphertexts draw from.

What a reader gets: decrypt_stream yields each segment's plaintext only after
its tag verified, in order. Reordered, dropped, duplicated or altered
segments, and a stream cut short or extended, raise ObjectUnauthentic at the
first segment that does not fit; segments already yielded were authentic
and at their right place, but the caller must treat the object as failed
(for HTTP: abort the response rather than end it cleanly).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"KWOB"
FORMAT_V1 = 1
DEFAULT_SEGMENT_SIZE = 64 * 1024
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
SALT_SIZE = 32
TAG_SIZE = 16
MAX_SEGMENTS = 2**32
_HEADER = struct.Struct(">4sBIQ32s")
HEADER_SIZE = _HEADER.size  # 49
# Never the label of another key derived from a DEK (the field key's is
# crypto.ciphertext.FIELD_KEY_INFO, which says why).
_SUBKEY_INFO = b"keyward object v1 segment key"
# A segment's nonce: its index in 11 bytes (3 zero bytes and an 8-byte counter),
# then the final flag. Its associated data: the object's 32-byte context, then
# the same index and flag. One C call each per segment (struct), where building
# them from slices and concatenations was a visible share of a 64 KiB segment.
_NONCE = struct.Struct(">3xQB")
_SEGMENT_AD = struct.Struct(">32sQB")

UNAUTHENTIC = (
    "object ciphertext does not authenticate: it was altered, truncated or extended, "
    "or it belongs to another object or tenant, or the key is not the one it was "
    "encrypted with"
)


class ObjectFormatError(ValueError):
    """The bytes are not an object in a format this code reads. Never carries data."""


class ObjectUnauthentic(ValueError):
    """A segment failed to authenticate, or the stream was cut or extended."""


@dataclass(frozen=True)
class ObjectHeader:
    version: int
    segment_size: int
    dek_id: int
    salt: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, self.segment_size, self.dek_id, self.salt)


def read_header(first_bytes: bytes) -> ObjectHeader:
    """Parse the header at the start of `first_bytes` (at least HEADER_SIZE bytes)."""
    if len(first_bytes) < HEADER_SIZE:
        raise ObjectFormatError(f"object header is truncated ({len(first_bytes)} bytes)")
    magic, version, segment_size, dek_id, salt = _HEADER.unpack_from(first_bytes)
    if magic != MAGIC:
        raise ObjectFormatError("not an encrypted object (bad magic)")
    if version != FORMAT_V1:
        raise ObjectFormatError(f"unknown object format {version}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ObjectFormatError(f"segment size {segment_size} out of range")
    return ObjectHeader(version, segment_size, int(dek_id), bytes(salt))


def ciphertext_size(plaintext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The exact size of the ciphertext of `plaintext_size` bytes."""
    _check_segment_size(segment_size)
    if plaintext_size < 0:
        raise ValueError("a size cannot be negative")
    full, rest = divmod(plaintext_size, segment_size)
    return HEADER_SIZE + full * (segment_size + TAG_SIZE) + rest + TAG_SIZE


def plaintext_size(ciphertext_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The inverse of ciphertext_size; ObjectFormatError for a size no object has."""
    _check_segment_size(segment_size)
    body = ciphertext_size - HEADER_SIZE
    if body < TAG_SIZE:
        raise ObjectFormatError(f"no object has {ciphertext_size} bytes of ciphertext")
    full, rest = divmod(body, segment_size + TAG_SIZE)
    if rest < TAG_SIZE:
        raise ObjectFormatError(f"no object has {ciphertext_size} bytes of ciphertext")
    return full * segment_size + rest - TAG_SIZE


class Digest:
    """Incremental SHA-256 and byte count of a plaintext, fed while it streams.

    The caller stores `hexdigest()` beside the object and serves it as the ETag.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass `chunks` through unchanged, hashing them on the way."""
        update = self.update
        for chunk in chunks:
            update(chunk)
            yield chunk


def encrypt_stream(
    chunks: Iterable[bytes],
    *,
    dek: bytes,
    dek_id: int,
    binding: bytes,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> Iterator[bytes]:
    """Encrypt `chunks` (any sizes) as one object; yield the header, then one piece per segment.

    Memory: one segment of pending plaintext, whatever the chunk sizes.
    """
    _check_segment_size(segment_size)
    if not 0 <= dek_id < 2**64:
        raise ValueError("a DEK id is an unsigned 64-bit integer")
    header = ObjectHeader(FORMAT_V1, segment_size, dek_id, os.urandom(SALT_SIZE))
    packed = header.pack()
    seal = AESGCM(_subkey(dek, header.salt)).encrypt
    context = _context(packed, binding)
    nonce, ad = _NONCE.pack, _SEGMENT_AD.pack
    yield packed

    # Plaintext waiting for a full segment lives in a preallocated buffer; full
    # segments inside a large chunk are sealed straight from a view of it.
    pending = bytearray(segment_size)
    view = memoryview(pending)
    filled = 0
    index = 0
    for chunk in chunks:
        data = memoryview(chunk).cast("B")
        size = len(data)
        offset = 0
        if filled:
            take = min(segment_size - filled, size)
            view[filled : filled + take] = data[:take]
            filled += take
            offset = take
            if filled < segment_size:
                continue
            yield seal(nonce(index, 0), pending, ad(context, index, 0))
            index += 1
            filled = 0
        while size - offset >= segment_size:
            segment = data[offset : offset + segment_size]
            yield seal(nonce(index, 0), segment, ad(context, index, 0))
            index += 1
            offset += segment_size
        if offset < size:
            view[: size - offset] = data[offset:]
            filled = size - offset
        if index >= MAX_SEGMENTS:
            raise ValueError(f"an object has at most {MAX_SEGMENTS} segments")
    yield seal(nonce(index, 1), view[:filled], ad(context, index, 1))


def decrypt_stream(
    pieces: Iterable[bytes],
    *,
    key_for: Callable[[int], bytes],
    binding: bytes,
) -> Iterator[bytes]:
    """Decrypt an object from `pieces` (any sizes); yield each segment's plaintext once it verified.

    Asks key_for(dek_id) for the DEK named in the header (once, before the first
    segment). Raises ObjectFormatError for bytes that are not an object and
    ObjectUnauthentic for anything altered, cut short or extended.
    """
    it = iter(pieces)
    # The first piece that completes the header; usually the very first one, kept
    # without a copy however large it is.
    head: bytes | bytearray = b""
    for piece in it:
        head = piece if not head else bytearray(head) + piece
        if len(head) >= HEADER_SIZE:
            break
    header = read_header(bytes(head[:HEADER_SIZE]))  # ObjectFormatError when too short
    packed = header.pack()
    open_ = AESGCM(_subkey(key_for(header.dek_id), header.salt)).decrypt
    context = _context(packed, binding)
    record = header.segment_size + TAG_SIZE

    pending = bytearray(record)
    view = memoryview(pending)
    filled = 0
    index = 0
    leftover = memoryview(head).cast("B")[HEADER_SIZE:]

    nonce, ad = _NONCE.pack, _SEGMENT_AD.pack
    # Every full record is a non-final segment: the final one is always shorter.
    # So a full record is opened as soon as it is complete; what remains at the
    # end of the input must be the final segment. One loop and no call of ours
    # per segment: this is the path of every download and every move.
    rest = (memoryview(piece).cast("B") for piece in it if piece)
    try:
        for data in itertools.chain((leftover,), rest):
            size = len(data)
            offset = 0
            if filled:
                take = min(record - filled, size)
                view[filled : filled + take] = data[:take]
                filled += take
                offset = take
                if filled < record:
                    continue
                yield open_(nonce(index, 0), pending, ad(context, index, 0))
                index += 1
                filled = 0
            while size - offset >= record:
                yield open_(nonce(index, 0), data[offset : offset + record], ad(context, index, 0))
                index += 1
                offset += record
            if offset < size:
                view[: size - offset] = data[offset:]
                filled = size - offset
            if index >= MAX_SEGMENTS:
                raise ObjectUnauthentic(UNAUTHENTIC)
        if filled < TAG_SIZE:
            # Cut at a segment boundary or inside a tag: the final segment is missing.
            raise ObjectUnauthentic(UNAUTHENTIC)
        final = open_(nonce(index, 1), view[:filled], ad(context, index, 1))
    except InvalidTag:
        raise ObjectUnauthentic(UNAUTHENTIC) from None
    if final:
        yield final


def aligned_reads(
    segment_size: int = DEFAULT_SEGMENT_SIZE, about: int = 1024 * 1024
) -> tuple[int, int]:
    """Read sizes (first, then each) near `about` bytes whose pieces end where a
    segment's record ends: the header and n records, then n records at a time.

    decrypt_stream opens every whole record of a piece where it lies; a record
    cut by a piece's end is first copied together in a buffer. With 1 MiB
    pieces that is one record in sixteen, about 3 % of a download's time.
    """
    _check_segment_size(segment_size)
    record = segment_size + TAG_SIZE
    n = max(1, about // record)
    return HEADER_SIZE + n * record, n * record


def peek_header(pieces: Iterable[bytes]) -> tuple[ObjectHeader, Iterator[bytes]]:
    """Read the header at the front of `pieces`; return it and the same bytes, from the start.

    The header is not authenticated yet: it names the object's DEK and salt,
    which decrypting (or authenticate_stream) then proves.
    """
    it = iter(pieces)
    taken: list[bytes] = []
    have = 0
    for piece in it:
        taken.append(piece)
        have += len(piece)
        if have >= HEADER_SIZE:
            break
    head = taken[0] if len(taken) == 1 else b"".join(taken)
    header = read_header(bytes(memoryview(head)[:HEADER_SIZE]))
    return header, itertools.chain(taken, it)


def authenticate_stream(
    pieces: Iterable[bytes],
    *,
    key_for: Callable[[int], bytes],
    binding: bytes,
) -> int:
    """Check every segment of an object as decrypt_stream does, keep nothing; return its size.

    The size is that of the plaintext. Same errors as decrypt_stream.
    """
    size = 0
    for plaintext in decrypt_stream(pieces, key_for=key_for, binding=binding):
        size += len(plaintext)
    return size


def _check_segment_size(segment_size: int) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(
            f"segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes"
        )


def _subkey(dek: bytes, salt: bytes) -> bytes:
    if len(dek) != 32:
        raise ValueError("a DEK is 32 bytes (AES-256)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_SUBKEY_INFO).derive(dek)


def _context(packed_header: bytes, binding: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (packed_header, binding):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    return digest.digest()
