from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.segments import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    TAG_SIZE,
    Digest,
    ObjectFormatError,
    ObjectUnauthentic,
    aligned_reads,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
    plaintext_size,
    read_header,
)

DEK = bytes(range(32))
OTHER_DEK = bytes(range(1, 33))
DEK_ID = 17
BINDING = b"tenant-a\x00photos/cat.jpg"
S = 64  # a small segment size makes every boundary cheap to reach
RECORD = S + TAG_SIZE


def keyring(*_: int) -> bytes:
    return DEK


def random_pieces(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    pieces, offset = [], 0
    while offset < len(data):
        size = rng.randint(0, largest)  # empty pieces too
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


def seal(
    data: bytes, *, segment_size: int = S, binding: bytes = BINDING, dek: bytes = DEK
) -> bytes:
    return b"".join(
        encrypt_stream([data], dek=dek, dek_id=DEK_ID, binding=binding, segment_size=segment_size)
    )


def open_all(
    blob: bytes, *, binding: bytes = BINDING, key_for: Callable[[int], bytes] = keyring
) -> bytes:
    return b"".join(decrypt_stream([blob], key_for=key_for, binding=binding))


def segments_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + RECORD] for i in range(0, len(body), RECORD)]


def assert_refused(
    blob: bytes,
    plaintext: bytes,
    error: type[Exception] | tuple[type[Exception], ...] = ObjectUnauthentic,
    *,
    binding: bytes = BINDING,
    key_for: Callable[[int], bytes] = keyring,
) -> None:
    """Decrypting `blob` fails, and what it yielded first is authentic plaintext in place."""
    yielded: list[bytes] = []
    with pytest.raises(error):
        for piece in decrypt_stream([blob], key_for=key_for, binding=binding):
            yielded.append(piece)
    for index, piece in enumerate(yielded):
        assert piece == plaintext[index * S : (index + 1) * S]
        assert len(piece) == S  # only full, non-final segments can precede the failure


PLAIN = bytes(random.Random(1).randbytes(5 * S + 23))  # five full segments and a final one
BLOB = seal(PLAIN)


@pytest.mark.parametrize("size", [0, 1, S - 1, S, S + 1, 2 * S, 7 * S + 5])
def test_round_trip_small_segments(size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    pieces = random_pieces(data, rng, 3 * S)
    blob = b"".join(encrypt_stream(pieces, dek=DEK, dek_id=DEK_ID, binding=BINDING, segment_size=S))
    assert len(blob) == ciphertext_size(size, S)
    assert plaintext_size(len(blob), S) == size
    out = decrypt_stream(random_pieces(blob, rng, 2 * RECORD), key_for=keyring, binding=BINDING)
    assert b"".join(out) == data


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        DEFAULT_SEGMENT_SIZE - 1,
        DEFAULT_SEGMENT_SIZE,
        DEFAULT_SEGMENT_SIZE + 1,
        5 * 1024 * 1024 + 123,
    ],
)
def test_round_trip_default_segments_random_chunking(size: int) -> None:
    rng = random.Random(size)
    data = os.urandom(size)
    pieces = random_pieces(data, rng, 300_000)
    blob = b"".join(encrypt_stream(pieces, dek=DEK, dek_id=DEK_ID, binding=BINDING))
    assert len(blob) == ciphertext_size(size)
    out = list(decrypt_stream(random_pieces(blob, rng, 200_000), key_for=keyring, binding=BINDING))
    assert b"".join(out) == data
    # Plaintext comes out one segment at a time, never more.
    assert all(len(piece) <= DEFAULT_SEGMENT_SIZE for piece in out)


def test_accepts_bytearray_and_memoryview_chunks() -> None:
    data = os.urandom(3 * S + 9)
    chunks = [bytearray(data[:10]), memoryview(data)[10 : 2 * S], data[2 * S :]]
    blob = b"".join(encrypt_stream(chunks, dek=DEK, dek_id=DEK_ID, binding=BINDING, segment_size=S))
    as_views = [memoryview(blob)[:50], bytearray(blob[50:])]
    assert b"".join(decrypt_stream(as_views, key_for=keyring, binding=BINDING)) == data


def test_empty_object_is_one_empty_final_segment() -> None:
    blob = seal(b"")
    assert len(blob) == HEADER_SIZE + TAG_SIZE
    assert open_all(blob) == b""
    assert list(decrypt_stream([blob], key_for=keyring, binding=BINDING)) == []


def test_a_multiple_of_the_segment_size_ends_with_an_empty_final_segment() -> None:
    blob = seal(bytes(2 * S))
    _header, segments = segments_of(blob)
    assert [len(s) for s in segments] == [RECORD, RECORD, TAG_SIZE]


@pytest.mark.parametrize("segment", [MIN_SEGMENT_SIZE, 1_000, DEFAULT_SEGMENT_SIZE, 2 * 1024**2])
def test_aligned_reads_end_every_piece_at_a_record(segment: int) -> None:
    record = segment + TAG_SIZE
    first, rest = aligned_reads(segment)
    assert (first - HEADER_SIZE) % record == 0 and rest % record == 0
    assert first - HEADER_SIZE == rest >= record
    assert rest <= 1024 * 1024 or rest == record  # near 1 MiB, one record at least
    assert rest + record > 1024 * 1024  # and as many records as fit in it
    plain = os.urandom(2 * (rest // record) * segment + 77)  # two pieces and some
    blob = b"".join(encrypt_stream([plain], dek=DEK, dek_id=DEK_ID, binding=BINDING,
                                   segment_size=segment))  # fmt: skip
    pieces = [blob[:first]] + [blob[o : o + rest] for o in range(first, len(blob), rest)]
    opened = list(decrypt_stream(pieces, key_for=lambda _: DEK, binding=BINDING))
    assert b"".join(opened) == plain


@pytest.mark.parametrize("segment", [0, MIN_SEGMENT_SIZE - 1, MAX_SEGMENT_SIZE + 1])
def test_aligned_reads_refuse_a_segment_size_out_of_range(segment: int) -> None:
    with pytest.raises(ValueError, match="segment size"):
        aligned_reads(segment)


def test_header_names_the_dek_and_key_for_is_asked_once() -> None:
    header = read_header(BLOB)
    assert (header.version, header.segment_size, header.dek_id) == (1, S, DEK_ID)
    asked: list[int] = []

    def key_for(dek_id: int) -> bytes:
        asked.append(dek_id)
        return DEK

    assert open_all(BLOB, key_for=key_for) == PLAIN
    assert asked == [DEK_ID]


def test_each_encryption_draws_a_new_salt() -> None:
    first, second = seal(PLAIN), seal(PLAIN)
    assert read_header(first).salt != read_header(second).salt
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


def test_sizes() -> None:
    assert ciphertext_size(0) == HEADER_SIZE + TAG_SIZE
    assert ciphertext_size(DEFAULT_SEGMENT_SIZE) == HEADER_SIZE + DEFAULT_SEGMENT_SIZE + 2 * 16
    assert ciphertext_size(100 * 1024 * 1024) == HEADER_SIZE + 100 * 1024 * 1024 + 1601 * 16
    for size in range(0, 4 * S):
        assert plaintext_size(ciphertext_size(size, S), S) == size
    for impossible in (0, HEADER_SIZE, HEADER_SIZE + TAG_SIZE - 1, HEADER_SIZE + RECORD + 3):
        with pytest.raises(ObjectFormatError):
            plaintext_size(impossible, S)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x02" + b[5:], "unknown object format 2"),
        (lambda b: b[:5] + (2**30).to_bytes(4, "big") + b[9:], "out of range"),
        (lambda b: b[:5] + (8).to_bytes(4, "big") + b[9:], "out of range"),
        (lambda b: b[:20], "truncated"),
        (lambda b: b"", "truncated"),
    ],
)
def test_not_an_object(mangle: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(ObjectFormatError, match=message):
        open_all(mangle(BLOB))


def test_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"x", dek=b"short")
    with pytest.raises(ValueError, match="segment size"):
        seal(b"x", segment_size=8)
    with pytest.raises(ValueError, match="64-bit"):
        list(encrypt_stream([b"x"], dek=DEK, dek_id=-1, binding=BINDING))


# -- tampering ---------------------------------------------------------------


def test_every_header_bit_flip_is_refused() -> None:
    for bit in range(HEADER_SIZE * 8):
        mangled = bytearray(BLOB)
        mangled[bit // 8] ^= 1 << (bit % 8)
        # The magic, version and size checks may see it first; past them, the
        # header is authenticated (the key ring answers for any DEK id here).
        expected = (ObjectFormatError, ObjectUnauthentic) if bit < 9 * 8 else ObjectUnauthentic
        assert_refused(bytes(mangled), PLAIN, expected)


def test_every_segment_bit_flip_is_refused() -> None:
    rng = random.Random(2)
    for offset in range(HEADER_SIZE, len(BLOB)):
        mangled = bytearray(BLOB)
        mangled[offset] ^= 1 << rng.randrange(8)
        assert_refused(bytes(mangled), PLAIN)


def test_dropped_segments_are_refused() -> None:
    header, segments = segments_of(BLOB)
    for index in range(len(segments)):
        assert_refused(header + b"".join(segments[:index] + segments[index + 1 :]), PLAIN)


def test_swapped_segments_are_refused() -> None:
    header, segments = segments_of(BLOB)
    for i in range(len(segments)):
        for j in range(i + 1, len(segments)):
            swapped = list(segments)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert_refused(header + b"".join(swapped), PLAIN)


def test_duplicated_segments_are_refused() -> None:
    header, segments = segments_of(BLOB)
    for index in range(len(segments)):
        doubled = segments[: index + 1] + segments[index:]
        assert_refused(header + b"".join(doubled), PLAIN)


def test_truncation_at_every_byte_is_refused() -> None:
    for cut in range(len(BLOB)):
        error = ObjectFormatError if cut < HEADER_SIZE else ObjectUnauthentic
        assert_refused(BLOB[:cut], PLAIN, error)


@pytest.mark.parametrize(
    "tail",
    [b"\x00", bytes(TAG_SIZE), bytes(RECORD), segments_of(BLOB)[1][0], segments_of(BLOB)[1][-1]],
    # The blob is random: ids that stay the same from one collection to the next.
    ids=["one zero", "zero tag", "zero record", "first segment", "last segment"],
)
def test_appended_bytes_are_refused(tail: bytes) -> None:
    assert_refused(BLOB + tail, PLAIN)


def test_another_binding_is_refused_before_any_plaintext() -> None:
    for binding in (b"tenant-b\x00photos/cat.jpg", b"tenant-a\x00photos/dog.jpg", b""):
        assert_refused(BLOB, PLAIN, binding=binding)
        with pytest.raises(ObjectUnauthentic):
            next(decrypt_stream([BLOB], key_for=keyring, binding=binding))


def test_wrong_dek_is_refused_before_any_plaintext() -> None:
    with pytest.raises(ObjectUnauthentic):
        next(decrypt_stream([BLOB], key_for=lambda _: OTHER_DEK, binding=BINDING))


def test_header_pointing_at_another_dek_is_refused() -> None:
    ring = {DEK_ID: DEK, DEK_ID + 1: OTHER_DEK}
    other = b"".join(
        encrypt_stream([PLAIN], dek=OTHER_DEK, dek_id=DEK_ID + 1, binding=BINDING, segment_size=S)
    )
    spliced = other[:HEADER_SIZE] + BLOB[HEADER_SIZE:]
    assert_refused(spliced, PLAIN, key_for=ring.__getitem__)


def test_segments_from_another_object_are_refused() -> None:
    """Same DEK, same binding, same plaintext: still another object (its own salt)."""
    header, segments = segments_of(BLOB)
    _other_header, other_segments = segments_of(seal(PLAIN))
    for index in range(len(segments)):
        mixed = list(segments)
        mixed[index] = other_segments[index]
        assert_refused(header + b"".join(mixed), PLAIN)


def test_an_authentic_prefix_is_yielded_before_a_late_failure() -> None:
    """Segments before the damage come out (they verified); the stream then fails."""
    mangled = bytearray(BLOB)
    mangled[HEADER_SIZE + 3 * RECORD + 5] ^= 1
    out: list[bytes] = []
    with pytest.raises(ObjectUnauthentic):
        for piece in decrypt_stream([bytes(mangled)], key_for=keyring, binding=BINDING):
            out.append(piece)
    assert out == [PLAIN[i * S : (i + 1) * S] for i in range(3)]


# -- memory ------------------------------------------------------------------


def test_memory_stays_bounded_for_50_mib() -> None:
    chunk = os.urandom(1024 * 1024)
    total = 50 * len(chunk)

    def body() -> Iterator[bytes]:
        for _ in range(50):
            yield chunk

    expected = hashlib.sha256()
    for _ in range(50):
        expected.update(chunk)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        digest = Digest()
        sealed = encrypt_stream(body(), dek=DEK, dek_id=DEK_ID, binding=BINDING)
        for piece in decrypt_stream(sealed, key_for=keyring, binding=BINDING):
            digest.update(piece)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.size == total
    assert digest.hexdigest() == expected.hexdigest()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes while streaming {total} bytes"


def test_digest_tee_passes_chunks_through() -> None:
    digest = Digest()
    chunks = [b"abc", b"", b"defg"]
    assert list(digest.tee(chunks)) == chunks
    assert digest.size == 7
    assert digest.hexdigest() == hashlib.sha256(b"abcdefg").hexdigest()


# The format as written down, opened and sealed with bare AES-GCM: stored objects
# must keep opening whatever the implementation does to go faster.
SPEC_SUBKEY_INFO = b"keyward object v1 segment key"


def spec_subkey(salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=SPEC_SUBKEY_INFO).derive(DEK)


def spec_context(packed_header: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (packed_header, BINDING):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()


def spec_nonce_and_ad(context: bytes, index: int, final: bool) -> tuple[bytes, bytes]:
    counter = index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")
    return bytes(3) + counter, context + counter


@pytest.mark.parametrize("size", [0, 1, S - 1, S, 3 * S, 3 * S + 5])
def test_the_written_format_opens_with_bare_aes_gcm(size: int) -> None:
    data = os.urandom(size)
    blob = b"".join(encrypt_stream([data], dek=DEK, dek_id=DEK_ID, binding=BINDING, segment_size=S))
    header = read_header(blob[:HEADER_SIZE])
    aead = AESGCM(spec_subkey(header.salt))
    context = spec_context(blob[:HEADER_SIZE])
    body = blob[HEADER_SIZE:]
    records = [body[o : o + RECORD] for o in range(0, len(body), RECORD)]
    if len(records[-1]) == RECORD:  # a multiple of S ends with an empty final segment
        records.append(b"")
    opened = []
    for index, record in enumerate(records):
        if record:
            nonce, ad = spec_nonce_and_ad(context, index, index == len(records) - 1)
            opened.append(aead.decrypt(nonce, record, ad))
    assert b"".join(opened) == data


@pytest.mark.parametrize("size", [0, 1, S, 3 * S + 5])
def test_an_object_sealed_by_the_written_format_opens(size: int) -> None:
    data = os.urandom(size)
    reference = b"".join(
        encrypt_stream([b""], dek=DEK, dek_id=DEK_ID, binding=BINDING, segment_size=S)
    )
    packed = reference[:HEADER_SIZE]  # a header as the format writes it
    aead = AESGCM(spec_subkey(read_header(packed).salt))
    context = spec_context(packed)
    segments = [data[o : o + S] for o in range(0, len(data), S)]
    if len(data) % S == 0:
        segments.append(b"")
    sealed = []
    for index, segment in enumerate(segments):
        nonce, ad = spec_nonce_and_ad(context, index, index == len(segments) - 1)
        sealed.append(aead.encrypt(nonce, segment, ad))
    blob = packed + b"".join(sealed)
    assert b"".join(decrypt_stream([blob], key_for=keyring, binding=BINDING)) == data
