"""The field ciphertext format (crypto.ciphertext), with real AES-256-GCM.

The field key of format 2 is computed here independently (HKDF-SHA256 with the
documented label), and format 1 blobs are built by hand with the DEK itself, as
they were written before format 2.
"""

from __future__ import annotations

import base64
import os
import struct
import threading

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import ciphertext, segments
from crypto.ciphertext import (
    HEADER_SIZE,
    NONCE_SIZE,
    OVERHEAD,
    TAG_SIZE,
    CiphertextError,
    CiphertextMalformed,
    CiphertextUnauthentic,
    FieldKeys,
    binding,
    dek_id_of,
    header,
    open_,
    parse_header,
    seal,
)

KEY = AESGCM.generate_key(256)  # the DEK
KEYS = FieldKeys(KEY)
DEK_ID = 0x0102030405060708
TENANT = "6f1c1c2e-8d7b-4b0e-9a47-3f0e5c1d2a90"
RECORD = "0b5e3a57-2f0a-4c6e-8e57-9d1f3b7c4e21"
BOUND = binding(TENANT, "user", "email", RECORD)
PLAINTEXT = b"alice.liddell@wonderland.example"  # 32 bytes


def sealed(plaintext: bytes = PLAINTEXT, dek_id: int = DEK_ID, bound: bytes = BOUND) -> bytes:
    return seal(KEYS, header(dek_id), plaintext, bound)


def open_checked(blob: bytes, bound: bytes = BOUND) -> bytes:
    """What every reader does: read the DEK id (validates the header), then open."""
    dek_id_of(blob)
    return open_(KEYS, blob, bound)


def derived_field_key(dek: bytes) -> bytes:
    """Format 2's key, computed here rather than by the code under test."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyward field key/2")
    return hkdf.derive(dek)


def sealed_v1(plaintext: bytes = PLAINTEXT, dek_id: int = DEK_ID, bound: bytes = BOUND) -> bytes:
    """A format 1 blob as it was written before format 2: the DEK itself is the key."""
    head = struct.pack(">BQ", 1, dek_id)
    nonce = os.urandom(NONCE_SIZE)
    return head + nonce + AESGCM(KEY).encrypt(nonce, plaintext, head + bound)


def nonce_of(blob: bytes) -> bytes:
    return blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE]


def secret_forms() -> list[bytes]:
    field_key = derived_field_key(KEY)
    return [
        KEY,
        KEY.hex().encode(),
        base64.b64encode(KEY),
        KEY[:8],
        field_key,
        field_key.hex().encode(),
        base64.b64encode(field_key),
        PLAINTEXT,
        PLAINTEXT.hex().encode(),
        PLAINTEXT[:8],
    ]


def assert_no_secrets(exc: BaseException) -> None:
    text = (str(exc) + repr(exc) + repr(exc.args)).encode()
    for form in secret_forms():
        assert form not in text
    assert exc.__cause__ is None


# -- round trip and layout ------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 32, 1000])
def test_seal_open_round_trip(size):
    plaintext = os.urandom(size)
    blob = sealed(plaintext)
    assert len(blob) == OVERHEAD + size
    assert open_(KEYS, blob, BOUND) == plaintext
    assert open_checked(blob) == plaintext


def test_blob_layout_is_format_dek_id_nonce_body_tag():
    blob = sealed()
    assert OVERHEAD == HEADER_SIZE + NONCE_SIZE + TAG_SIZE == 37
    assert blob[0] == ciphertext.FORMAT_CURRENT == ciphertext.FORMAT_V2 == 2
    assert blob[1:HEADER_SIZE] == DEK_ID.to_bytes(8, "big")
    assert blob[:HEADER_SIZE] == header(DEK_ID)
    assert PLAINTEXT not in blob


def test_sealing_the_same_value_twice_gives_different_blobs():
    assert sealed() != sealed()


@pytest.mark.parametrize("dek_id", [0, 1, 255, 2**32 + 7, DEK_ID, 2**64 - 1])
def test_dek_id_of_reads_the_id(dek_id):
    assert dek_id_of(sealed(dek_id=dek_id)) == dek_id


# -- tampering ------------------------------------------------------------------


def region(index: int, size: int) -> str:
    if index == 0:
        return "format"
    if index < HEADER_SIZE:
        return "dek id"
    if index < HEADER_SIZE + NONCE_SIZE:
        return "nonce"
    if index < size - TAG_SIZE:
        return "body"
    return "tag"


def test_every_tampered_byte_is_rejected():
    blob = sealed()
    seen = set()
    for index in range(len(blob)):
        for mask in (0x01, 0x03, 0x80, 0xFF):  # 0x03 turns format 2 into format 1
            tampered = bytearray(blob)
            tampered[index] ^= mask
            tampered_blob = bytes(tampered)
            seen.add(region(index, len(blob)))
            with pytest.raises((CiphertextUnauthentic, CiphertextMalformed)) as checked:
                open_checked(tampered_blob)
            assert_no_secrets(checked.value)
            # open_ alone never returns data either.
            with pytest.raises((CiphertextUnauthentic, CiphertextMalformed)) as unchecked:
                open_(KEYS, tampered_blob, BOUND)
            assert_no_secrets(unchecked.value)
    assert seen == {"format", "dek id", "nonce", "body", "tag"}


def test_changed_dek_id_in_header_fails_to_authenticate():
    blob = sealed()
    swapped = header(DEK_ID + 1) + blob[HEADER_SIZE:]
    assert dek_id_of(swapped) == DEK_ID + 1
    # Even with the right key: the DEK id is associated data.
    with pytest.raises(CiphertextUnauthentic):
        open_(KEYS, swapped, BOUND)


@pytest.mark.parametrize("version", [0, 3, 0x81, 0xFF])
def test_unknown_format_byte_raises(version):
    blob = sealed()
    other = bytes([version]) + blob[1:]
    with pytest.raises(CiphertextMalformed, match=f"format {version}") as exc:
        dek_id_of(other)
    assert_no_secrets(exc.value)
    with pytest.raises(CiphertextError):
        open_checked(other)
    with pytest.raises(CiphertextError):  # the format byte is authenticated too
        open_(KEYS, other, BOUND)


def test_truncated_blobs_are_malformed():
    blob = sealed()
    for size in range(OVERHEAD):
        with pytest.raises(CiphertextMalformed, match="truncated") as exc:
            dek_id_of(blob[:size])
        assert_no_secrets(exc.value)
        with pytest.raises(CiphertextMalformed):
            open_checked(blob[:size])
    # Long enough to be a ciphertext, but cut: it does not authenticate.
    for size in range(OVERHEAD, len(blob)):
        with pytest.raises(CiphertextUnauthentic):
            open_checked(blob[:size])


def test_open_rejects_truncated_blob_as_malformed():
    """BUG: open_ alone trusts the length. Below 17 bytes AESGCM raises a bare
    ValueError ("Nonce must be between 8 and 128 bytes"), which is not a
    CiphertextError; from 17 to 36 bytes it reports CiphertextUnauthentic."""
    blob = sealed()
    for size in range(OVERHEAD):
        with pytest.raises(CiphertextMalformed):
            open_(KEYS, blob[:size], BOUND)


def test_extended_blob_fails_to_authenticate():
    blob = sealed()
    with pytest.raises(CiphertextUnauthentic):
        open_checked(blob + b"\x00")
    with pytest.raises(CiphertextUnauthentic):
        open_checked(blob[:HEADER_SIZE] + b"\x00" + blob[HEADER_SIZE:])


def test_other_key_fails_to_authenticate():
    with pytest.raises(CiphertextUnauthentic):
        open_(FieldKeys(AESGCM.generate_key(256)), sealed(), BOUND)


# -- the field key and format 1 ---------------------------------------------------


def test_format_2_is_sealed_with_the_derived_field_key_not_the_dek():
    blob = sealed()
    nonce, body, aad = nonce_of(blob), blob[HEADER_SIZE + NONCE_SIZE :], blob[:HEADER_SIZE] + BOUND
    with pytest.raises(InvalidTag):  # the DEK is not the field key
        AESGCM(KEY).decrypt(nonce, body, aad)
    assert AESGCM(derived_field_key(KEY)).decrypt(nonce, body, aad) == PLAINTEXT
    assert ciphertext.field_key(KEY) == derived_field_key(KEY) != KEY


def test_field_key_label_is_not_the_object_segment_label():
    assert ciphertext.FIELD_KEY_INFO == b"keyward field key/2"
    assert ciphertext.FIELD_KEY_INFO != segments._SUBKEY_INFO


def test_field_keys_need_a_32_byte_dek():
    with pytest.raises(ValueError, match="32 bytes"):
        FieldKeys(KEY[:16])


@pytest.mark.parametrize("size", [0, 1, 32, 1000])
def test_format_1_blob_written_with_the_dek_still_opens(size):
    plaintext = os.urandom(size)
    blob = sealed_v1(plaintext)
    assert blob[0] == ciphertext.FORMAT_V1 == 1
    assert parse_header(blob) == (1, DEK_ID)
    assert dek_id_of(blob) == DEK_ID
    assert open_(KEYS, blob, BOUND) == plaintext
    assert open_checked(blob) == plaintext


def test_format_1_blob_is_still_bound_to_its_record():
    for bound in OTHER_BINDINGS.values():
        with pytest.raises(CiphertextUnauthentic):
            open_(KEYS, sealed_v1(), bound)


def test_relabelling_the_format_byte_is_refused():
    v2_as_v1 = bytes([1]) + sealed()[1:]
    v1_as_v2 = bytes([2]) + sealed_v1()[1:]
    for relabelled in (v2_as_v1, v1_as_v2):
        assert dek_id_of(relabelled) == DEK_ID  # a well-formed header...
        with pytest.raises(CiphertextUnauthentic) as exc:  # ...that does not authenticate
            open_(KEYS, relabelled, BOUND)
        assert_no_secrets(exc.value)


def test_every_tampered_byte_of_a_format_1_blob_is_rejected():
    blob = sealed_v1()
    for index in range(len(blob)):
        for mask in (0x01, 0x03, 0x80, 0xFF):
            tampered = bytearray(blob)
            tampered[index] ^= mask
            with pytest.raises((CiphertextUnauthentic, CiphertextMalformed)):
                open_(KEYS, bytes(tampered), BOUND)


# -- binding --------------------------------------------------------------------

OTHER_BINDINGS = {
    "tenant": binding("0c2d9d4e-1111-4b0e-9a47-3f0e5c1d2a90", "user", "email", RECORD),
    "kind": binding(TENANT, "invoice", "email", RECORD),
    "field": binding(TENANT, "user", "phone", RECORD),
    "record": binding(TENANT, "user", "email", "0b5e3a57-2f0a-4c6e-8e57-9d1f3b7c4e22"),
    "empty": b"",
}


@pytest.mark.parametrize("changed", sorted(OTHER_BINDINGS))
def test_opening_under_another_binding_fails(changed):
    blob = sealed()
    with pytest.raises(CiphertextUnauthentic) as exc:
        open_checked(blob, OTHER_BINDINGS[changed])
    assert_no_secrets(exc.value)


def test_binding_is_unambiguous():
    # Moving a character from one part to the next changes the binding.
    assert binding("ab", "c", "d", "e") != binding("a", "bc", "d", "e")
    assert binding("a", "b", "cd", "") != binding("a", "b", "c", "d")
    blob = sealed(bound=binding("ab", "c", "d", "e"))
    with pytest.raises(CiphertextUnauthentic):
        open_checked(blob, binding("a", "bc", "d", "e"))


def test_binding_accepts_non_ascii():
    bound = binding(TENANT, "user", "prénom", "ü-1")
    assert open_checked(sealed(bound=bound), bound) == PLAINTEXT


# -- nonces ---------------------------------------------------------------------


def test_nonces_are_distinct_across_100k_seals():
    head = header(DEK_ID)
    nonces = {nonce_of(seal(KEYS, head, b"", BOUND)) for _ in range(100_000)}
    assert len(nonces) == 100_000


def test_nonces_are_distinct_across_threads() -> None:
    threads, per_thread = 8, 5_000
    barrier = threading.Barrier(threads)
    results: list[list[bytes]] = [[] for _ in range(threads)]
    head = header(DEK_ID)

    def work(index: int) -> None:
        barrier.wait()
        out = results[index]
        for _ in range(per_thread):
            out.append(nonce_of(seal(KEYS, head, b"x", BOUND)))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    everything = [nonce for out in results for nonce in out]
    assert len(everything) == threads * per_thread
    assert len(set(everything)) == len(everything)


def test_nonces_are_distinct_across_fork():
    """A forked child (gunicorn, Celery prefork) must not replay the parent's nonces.

    Parent and child would otherwise continue from the same buffer and offset,
    and seal with identical nonces under the same DEK.
    """
    head = header(DEK_ID)
    seal(KEYS, head, b"", BOUND)
    pool = getattr(ciphertext, "_nonces", None)
    if pool is not None and getattr(pool, "offset", 0) >= getattr(pool, "BLOCK", 1):
        seal(KEYS, head, b"", BOUND)  # not at a block boundary: the next nonce is pooled
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: seal once, report the nonce, leave without cleanup
        try:
            os.close(read_end)
            os.write(write_end, nonce_of(seal(KEYS, head, b"", BOUND)))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        parent_nonce = nonce_of(seal(KEYS, head, b"", BOUND))
        child_nonce = os.read(read_end, NONCE_SIZE)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert len(child_nonce) == NONCE_SIZE
    assert child_nonce != parent_nonce


# -- errors ---------------------------------------------------------------------


def test_error_hierarchy():
    for error in (CiphertextMalformed, CiphertextUnauthentic, ciphertext.UnknownDataKey):
        assert issubclass(error, CiphertextError)
    assert issubclass(CiphertextError, ValueError)


def test_error_messages_carry_no_plaintext_or_key_bytes() -> None:
    blob = sealed()
    errors: list[BaseException] = []
    attempts = [
        lambda: open_checked(blob[:20]),
        lambda: open_checked(bytes([9]) + blob[1:]),
        lambda: open_checked(blob[:-1] + bytes([blob[-1] ^ 1])),
        lambda: open_checked(blob, OTHER_BINDINGS["tenant"]),
        lambda: open_(FieldKeys(AESGCM.generate_key(256)), blob, BOUND),
    ]
    for attempt in attempts:
        with pytest.raises(CiphertextError) as exc:
            attempt()
        errors.append(exc.value)
    for error in errors:
        assert_no_secrets(error)
