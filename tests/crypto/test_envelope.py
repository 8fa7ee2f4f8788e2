"""The envelope (crypto.envelope) over a fake state source and a DekCache of random DEKs."""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.ciphertext import (
    CiphertextMalformed,
    CiphertextUnauthentic,
    FieldKeys,
    UnknownDataKey,
    binding,
    dek_id_of,
    header,
    seal,
)
from crypto.dekcache import DekCache, LoadedKey
from crypto.envelope import (
    DataKeyExhausted,
    Envelope,
    KeyRevoked,
    NoDataKey,
    TenantKeyState,
)

TENANT = "6f1c1c2e-8d7b-4b0e-9a47-3f0e5c1d2a90"
OTHER = "0c2d9d4e-1111-4b0e-9a47-3f0e5c1d2a90"
RECORD = "0b5e3a57-2f0a-4c6e-8e57-9d1f3b7c4e21"
VALUE = b"alice.liddell@wonderland.example"
INTERVAL = 0.5


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStates:
    """The StateSource: a dict of tenant states, with a fetch counter."""

    def __init__(self) -> None:
        self.states: dict[str, TenantKeyState] = {}
        self.fetches = 0

    def set(self, tenant_id: str, epoch: int = 1, dek: int | None = 1, status: str = "active"):
        self.states[tenant_id] = TenantKeyState(epoch, dek, status)

    def fetch(self, tenant_id: str) -> TenantKeyState:
        self.fetches += 1
        return self.states[tenant_id]


class DekStore:
    """The DEK loader: random DEKs per (tenant, DEK id); unknown ids raise UnknownDataKey."""

    def __init__(self) -> None:
        self.material: dict[tuple[str, int], bytes] = {}
        self.calls: list[tuple[str, int]] = []

    def add(self, tenant_id: str, dek_id: int) -> None:
        self.material[(tenant_id, dek_id)] = AESGCM.generate_key(256)

    def __call__(self, tenant_id: str, dek_id: int) -> LoadedKey:
        self.calls.append((tenant_id, dek_id))
        try:
            return LoadedKey(self.material[(tenant_id, dek_id)], 300.0)
        except KeyError:
            raise UnknownDataKey(f"data key {dek_id} is unknown for this tenant") from None


@dataclass
class Counter:
    """reserve / on_exhausted: grants `limit` encryptions per DEK in total."""

    limit: int = 10**9
    reserved: dict[int, int] = field(default_factory=dict)
    calls: list[tuple[str, int, int]] = field(default_factory=list)
    exhausted: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, tenant_id: str, dek_id: int, wanted: int) -> int:
        with self.lock:
            self.calls.append((tenant_id, dek_id, wanted))
            already = self.reserved.get(dek_id, 0)
            if already + wanted > self.limit:
                return 0
            self.reserved[dek_id] = already + wanted
            return wanted

    def on_exhausted(self, tenant_id: str, dek_id: int) -> None:
        self.exhausted.append((tenant_id, dek_id))


@dataclass
class World:
    env: Envelope
    states: FakeStates
    deks: DekStore
    counter: Counter
    clock: FakeClock


def make(block: int = 65_536, limit: int = 10**9) -> World:
    states, deks, counter, clock = FakeStates(), DekStore(), Counter(limit=limit), FakeClock()
    for tenant in (TENANT, OTHER):
        states.set(tenant)
    deks.add(TENANT, 1)
    deks.add(TENANT, 2)
    deks.add(OTHER, 11)
    states.set(OTHER, dek=11)
    env = Envelope(
        cache=DekCache(deks, clock=clock),
        states=states,
        reserve=counter.reserve,
        on_exhausted=counter.on_exhausted,
        state_interval=INTERVAL,
        block=block,
        clock=clock,
    )
    return World(env, states, deks, counter, clock)


def items(n: int, prefix: str = "r") -> list[tuple[str, str, str, bytes]]:
    return [("user", "email", f"{prefix}-{i}", f"value {i}".encode()) for i in range(n)]


# -- round trips ----------------------------------------------------------------


def test_encrypt_decrypt_round_trip():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert dek_id_of(blob) == 1
    assert VALUE not in blob
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE
    assert w.deks.calls == [(TENANT, 1)]  # one unwrap for both


def test_ciphertext_is_bound_to_its_field_and_record():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt(TENANT, "user", "phone", RECORD, blob)
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt(TENANT, "user", "email", "another-record", blob)
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt(TENANT, "invoice", "email", RECORD, blob)


def test_ciphertext_copied_to_another_tenant_does_not_decrypt():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    with pytest.raises(UnknownDataKey):  # the other tenant has no DEK 1
        w.env.decrypt(OTHER, "user", "email", RECORD, blob)
    w.deks.material[(OTHER, 1)] = w.deks.material[(TENANT, 1)]  # even with the same DEK
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt(OTHER, "user", "email", RECORD, blob)


def test_encrypt_many_decrypt_many_round_trip():
    w = make()
    batch = items(50)
    blobs = w.env.encrypt_many(TENANT, batch)
    assert len(blobs) == 50
    assert len(set(blobs)) == 50
    assert {dek_id_of(b) for b in blobs} == {1}
    back = w.env.decrypt_many(
        TENANT, [(k, f, r, b) for (k, f, r, _), b in zip(batch, blobs, strict=True)]
    )
    assert back == [value for *_, value in batch]
    # Each item is bound to its own record.
    blob = w.env.encrypt_many(TENANT, batch[:1])[0]
    assert w.env.decrypt(TENANT, "user", "email", "r-0", blob) == b"value 0"
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt(TENANT, "user", "email", "r-1", blob)


def test_decrypt_many_with_mixed_deks_after_rotation():
    w = make()
    old_items = items(5, "old")
    old = w.env.encrypt_many(TENANT, old_items)
    w.states.set(TENANT, dek=2)  # rotation: the current DEK changes, not the epoch
    w.clock.advance(INTERVAL)
    new_items = items(5, "new")
    new = w.env.encrypt_many(TENANT, new_items)
    assert {dek_id_of(b) for b in old} == {1}
    assert {dek_id_of(b) for b in new} == {2}

    mixed = []
    for o, ob, n, nb in zip(old_items, old, new_items, new, strict=True):
        mixed += [(*o[:3], ob), (*n[:3], nb)]
    plain = w.env.decrypt_many(TENANT, mixed)
    assert plain == [v for o, n in zip(old_items, new_items, strict=True) for v in (o[3], n[3])]
    assert w.deks.calls == [(TENANT, 1), (TENANT, 2)]  # no reload for a rotation
    w.env.decrypt(TENANT, "user", "email", "old-0", old[0])
    assert w.env.take_counts() == {1: 5, 2: 5}


def test_decrypt_of_malformed_blob():
    w = make()
    with pytest.raises(CiphertextMalformed):
        w.env.decrypt(TENANT, "user", "email", RECORD, b"\x01short")


def test_decrypt_of_unknown_dek_propagates_the_loaders_error():
    w = make()
    blob = seal(FieldKeys(AESGCM.generate_key(256)), header(999), VALUE, b"")
    with pytest.raises(UnknownDataKey, match="999"):
        w.env.decrypt(TENANT, "user", "email", RECORD, blob)
    with pytest.raises(UnknownDataKey):
        w.env.decrypt_many(TENANT, [("user", "email", RECORD, blob)])
    assert w.deks.calls == [(TENANT, 999), (TENANT, 999)]  # errors are not cached


# -- formats: the field key, and format 1 read-only ---------------------------------


def field_key(dek: bytes) -> bytes:
    """Format 2's key, computed here rather than by the code under test."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyward field key/2")
    return hkdf.derive(dek)


def parts(blob: bytes, record_id: str = RECORD) -> tuple[bytes, bytes, bytes]:
    """(nonce, ciphertext and tag, associated data) of a blob of user.email of RECORD."""
    return blob[9:21], blob[21:], blob[:9] + binding(TENANT, "user", "email", record_id)


def v1_blob(dek: bytes, dek_id: int, value: bytes, record_id: str = RECORD) -> bytes:
    """A format 1 blob as it was written before format 2: sealed with the DEK itself."""
    head = struct.pack(">BQ", 1, dek_id)
    nonce = os.urandom(12)
    aad = head + binding(TENANT, "user", "email", record_id)
    return head + nonce + AESGCM(dek).encrypt(nonce, value, aad)


def test_new_ciphertexts_are_format_2_under_the_derived_field_key():
    w = make()
    dek = w.deks.material[(TENANT, 1)]
    blobs = [
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE),
        w.env.encrypt_many(TENANT, [("user", "email", RECORD, VALUE)])[0],
    ]
    for blob in blobs:
        assert blob[0] == 2
        with pytest.raises(InvalidTag):  # the DEK itself is not the field key
            AESGCM(dek).decrypt(*parts(blob))
        assert AESGCM(field_key(dek)).decrypt(*parts(blob)) == VALUE


def test_format_1_blobs_still_decrypt_with_one_unwrap():
    w = make()
    old = [
        v1_blob(w.deks.material[(TENANT, 1)], 1, f"old {i}".encode(), f"r-{i}") for i in range(3)
    ]
    assert w.env.decrypt(TENANT, "user", "email", "r-0", old[0]) == b"old 0"
    new = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    mixed = [("user", "email", f"r-{i}", blob) for i, blob in enumerate(old)]
    mixed.append(("user", "email", RECORD, new))
    assert w.env.decrypt_many(TENANT, mixed) == [b"old 0", b"old 1", b"old 2", VALUE]
    assert w.deks.calls == [(TENANT, 1)]  # both formats' keys come from one unwrap
    assert w.env.take_counts() == {1: 1}  # reading format 1 counts nothing
    with pytest.raises(CiphertextUnauthentic):  # still bound to its record
        w.env.decrypt(TENANT, "user", "email", "r-1", old[0])


def test_relabelling_the_format_byte_is_refused():
    w = make()
    v2 = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    v1 = v1_blob(w.deks.material[(TENANT, 1)], 1, VALUE)
    assert w.env.decrypt(TENANT, "user", "email", RECORD, v1) == VALUE
    for relabelled in (bytes([1]) + v2[1:], bytes([2]) + v1[1:]):
        with pytest.raises(CiphertextUnauthentic):
            w.env.decrypt(TENANT, "user", "email", RECORD, relabelled)
        with pytest.raises(CiphertextUnauthentic):
            w.env.decrypt_many(TENANT, [("user", "email", RECORD, relabelled)])


@pytest.mark.parametrize("version", [0, 3, 0xFF])
def test_unknown_format_is_malformed_before_any_unwrap(version):
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    w.env.forget(TENANT)
    with pytest.raises(CiphertextMalformed, match=f"format {version}"):
        w.env.decrypt(TENANT, "user", "email", RECORD, bytes([version]) + blob[1:])
    with pytest.raises(CiphertextMalformed):
        w.env.decrypt_many(TENANT, [("user", "email", RECORD, bytes([version]) + blob[1:])])
    assert w.deks.calls == [(TENANT, 1)]


# -- tenant state ---------------------------------------------------------------


def test_state_is_read_at_most_once_per_interval():
    w = make()
    for _ in range(10):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.states.fetches == 1
    w.clock.advance(INTERVAL - 0.01)
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.states.fetches == 1
    w.clock.advance(0.01)
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.states.fetches == 2


def test_epoch_change_drops_cached_deks():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    other = w.env.encrypt(OTHER, "user", "email", RECORD, VALUE)
    w.states.set(TENANT, epoch=2)
    w.env.decrypt(TENANT, "user", "email", RECORD, blob)  # within the interval: cached
    assert w.deks.calls == [(TENANT, 1), (OTHER, 11)]
    w.clock.advance(INTERVAL)
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE
    assert w.env.decrypt(OTHER, "user", "email", RECORD, other) == VALUE
    assert w.deks.calls == [(TENANT, 1), (OTHER, 11), (TENANT, 1)]  # only TENANT reloads
    w.clock.advance(INTERVAL)
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert len(w.deks.calls) == 3  # same epoch again: kept


def test_revoked_tenant_raises_even_while_deks_are_cached():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    other = w.env.encrypt(OTHER, "user", "email", RECORD, VALUE)
    w.states.set(TENANT, status="revoked")  # same epoch: only the status says it
    w.clock.advance(INTERVAL)
    calls = [
        lambda: w.env.encrypt(TENANT, "user", "email", RECORD, VALUE),
        lambda: w.env.decrypt(TENANT, "user", "email", RECORD, blob),
        lambda: w.env.encrypt_many(TENANT, items(2)),
        lambda: w.env.decrypt_many(TENANT, [("user", "email", RECORD, blob)]),
        lambda: w.env.current_key(TENANT),
        lambda: w.env.key_for(TENANT, 1),
    ]
    for call in calls:
        with pytest.raises(KeyRevoked, match="revoked"):
            call()
    assert w.env.decrypt(OTHER, "user", "email", RECORD, other) == VALUE
    assert w.env.take_counts() == {1: 1, 11: 1}  # nothing counted while revoked

    w.states.set(TENANT, epoch=2)  # restored
    w.clock.advance(INTERVAL)
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE
    assert w.deks.calls.count((TENANT, 1)) == 2  # the revoke dropped the cached DEK


def test_destroyed_status_is_reported():
    w = make()
    w.states.set(TENANT, status="destroyed")
    with pytest.raises(KeyRevoked, match="destroyed"):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)


def test_no_current_dek_raises_no_data_key_but_old_data_decrypts():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    w.states.set(TENANT, dek=None)
    w.clock.advance(INTERVAL)
    with pytest.raises(NoDataKey):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    with pytest.raises(NoDataKey):
        w.env.encrypt_many(TENANT, items(3))
    with pytest.raises(NoDataKey):
        w.env.current_key(TENANT)
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE


def test_forget_drops_state_and_deks_at_once():
    w = make()
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    w.env.forget(TENANT)
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.states.fetches == 2
    assert w.deks.calls == [(TENANT, 1), (TENANT, 1)]


def test_current_key_is_usable_with_seal():
    w = make()
    dek_id, keys = w.env.current_key(TENANT)
    assert dek_id == 1
    blob = seal(keys, header(dek_id), VALUE, binding(TENANT, "user", "email", RECORD))
    assert blob[0] == 2
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE
    assert w.env.key_for(TENANT, 1) is keys


# -- counting -------------------------------------------------------------------


def test_spend_reserves_in_blocks_and_take_counts_resets():
    w = make(block=4)
    for _ in range(10):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.counter.calls == [(TENANT, 1, 4)] * 3  # ceil(10 / 4)
    assert w.env.take_counts() == {1: 10}
    assert w.env.take_counts() == {}
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.env.take_counts() == {1: 1}
    assert len(w.counter.calls) == 3  # 12 reserved, 11 used


def test_batch_larger_than_a_block_reserves_the_batch():
    w = make(block=4)
    w.env.encrypt_many(TENANT, items(9))
    assert w.counter.calls == [(TENANT, 1, 9)]
    w.env.encrypt_many(TENANT, items(4))
    assert w.counter.calls == [(TENANT, 1, 9), (TENANT, 1, 4)]
    w.env.encrypt_many(OTHER, items(2))
    assert w.counter.calls[-1] == (OTHER, 11, 4)
    assert w.env.take_counts() == {1: 13, 11: 2}


def test_exhaustion_calls_on_exhausted_and_raises():
    w = make(block=4, limit=6)
    for _ in range(4):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    for _ in range(2):  # the second block is refused
        with pytest.raises(DataKeyExhausted):
            w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.counter.exhausted == [(TENANT, 1), (TENANT, 1)]
    assert w.env.take_counts() == {1: 4}  # failures are not counted as used
    with pytest.raises(DataKeyExhausted):
        w.env.encrypt_many(TENANT, items(3))
    assert w.env.take_counts() == {}

    w.states.set(TENANT, dek=2)  # the rotation it asked for
    w.clock.advance(INTERVAL)
    assert dek_id_of(w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)) == 2
    assert w.env.take_counts() == {2: 1}


def test_refused_batch_keeps_the_remaining_budget():
    w = make(block=4, limit=4)
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)  # reserves 4, 3 left
    with pytest.raises(DataKeyExhausted):
        w.env.encrypt_many(TENANT, items(5))
    for _ in range(3):  # the 3 already reserved are still spendable
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    with pytest.raises(DataKeyExhausted):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.env.take_counts() == {1: 4}
    assert w.counter.reserved == {1: 4}


def test_counting_is_exact_across_threads():
    w = make(block=100)
    threads, per_thread = 8, 500
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert w.env.take_counts() == {1: threads * per_thread}
    assert w.counter.reserved[1] == threads * per_thread  # blocks of 100, all spent


def test_repr_has_no_key_material():
    w = make()
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    text = repr(w.env)
    for material in w.deks.material.values():
        for key in (material, field_key(material)):
            assert key.hex() not in text
            assert repr(key) not in text


# -- the per-tenant fast path keeps every bound of the slow one ------------------


def test_revocation_reaches_the_fast_path_exactly_at_the_state_interval():
    """The fast path re-reads the state no later than the slow path did: a revoke
    published just after a read is seen on the first call at INTERVAL, not later."""
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    w.env.decrypt(TENANT, "user", "email", RECORD, blob)
    w.states.set(TENANT, status="revoked")
    w.clock.advance(INTERVAL - 1e-6)  # still inside the interval: served from memory
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.states.fetches == 1
    w.clock.advance(1e-6)
    with pytest.raises(KeyRevoked):
        w.env.decrypt(TENANT, "user", "email", RECORD, blob)
    with pytest.raises(KeyRevoked):
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.states.fetches == 2


def test_a_dek_cache_drop_reaches_the_fast_path_at_once():
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    w.env.decrypt(TENANT, "user", "email", RECORD, blob)
    w.env.cache.drop_tenant(TENANT)  # not through the envelope
    w.env.decrypt(TENANT, "user", "email", RECORD, blob)
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.deks.calls == [(TENANT, 1), (TENANT, 1)]
    w.env.cache.clear()
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.deks.calls == [(TENANT, 1)] * 3


def test_the_fast_path_never_uses_a_dek_past_its_cache_ttl():
    """DekStore's TTL is 300 s and the state stays fresh (re-read, unchanged), yet
    past the TTL the DEK is unwrapped again: the entry's time bounds the fast path too."""
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    for _ in range(int(300 / INTERVAL) + 1):
        w.clock.advance(INTERVAL)
        w.env.decrypt(TENANT, "user", "email", RECORD, blob)
        w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.deks.calls.count((TENANT, 1)) >= 2


def test_prime_with_a_new_current_dek_is_used_by_the_next_encrypt():
    w = make()
    assert dek_id_of(w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)) == 1
    w.env.prime(TENANT, TenantKeyState(epoch=1, current_dek_id=2))
    assert dek_id_of(w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)) == 2
    assert dek_id_of(w.env.encrypt_many(TENANT, items(2))[0]) == 2


def test_counts_are_exact_with_threads_on_the_lock_free_path():
    w = make(block=7, limit=10**6)
    threads, per_thread = 8, 500

    def work() -> None:
        for i in range(per_thread):
            if i % 50 == 0:
                w.env.encrypt_many(TENANT, items(3))
            else:
                w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    expected = threads * (per_thread - per_thread // 50 + 3 * (per_thread // 50))
    assert w.env.take_counts() == {1: expected}
    assert w.counter.reserved[1] >= expected  # never used more than was reserved


def test_many_calls_with_long_and_mixed_record_ids_and_fields():
    w = make()
    batch = [
        ("user", "email", "r" * 300, b"long id"),
        ("device", "serial", "", b"empty id"),
        ("user", "email", RECORD, b"uuid id"),
        ("user", "phone", RECORD, b"other field"),
    ]
    blobs = w.env.encrypt_many(TENANT, batch)
    for (kind, field_, record_id, value), blob in zip(batch, blobs, strict=True):
        assert w.env.decrypt(TENANT, kind, field_, record_id, blob) == value
        assert blob[9:] != seal(FieldKeys(os.urandom(32)), header(1), value, b"")[9:]
    sealed = [(k, f, r, b) for (k, f, r, _), b in zip(batch, blobs, strict=True)]
    assert w.env.decrypt_many(TENANT, sealed) == [v for *_, v in batch]
    with pytest.raises(CiphertextUnauthentic):  # a long record id is bound too
        w.env.decrypt(TENANT, "user", "email", "r" * 299 + "s", blobs[0])
    with pytest.raises(CiphertextMalformed):
        w.env.decrypt_many(TENANT, [*sealed[:2], ("user", "email", RECORD, b"\x02short")])
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt_many(TENANT, [sealed[0], ("user", "email", RECORD, blobs[0])])


def test_nonces_of_the_envelope_are_distinct_in_a_forked_child():
    w = make()
    w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)  # the pool holds a block now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            child = [w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)[9:21] for _ in range(50)]
            os.write(write_end, b"".join(child))
        finally:
            os._exit(0)
    os.close(write_end)
    parent = {w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)[9:21] for _ in range(50)}
    data = b""
    while chunk := os.read(read_end, 4096):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    child = {data[i : i + 12] for i in range(0, len(data), 12)}
    assert len(child) == 50 and not parent & child


# -- pages: the shortcut for a page of one kind and field ---------------------

_PAGE_IDS = (RECORD, OTHER, "r" * 40, "short", "")
_FAILURES = (CiphertextMalformed, CiphertextUnauthentic, UnknownDataKey)


def _outcome(call):
    try:
        return call()
    except _FAILURES as exc:
        return type(exc)


def _sealed_world() -> tuple[World, list[tuple[str, str, str, bytes]]]:
    """A tenant with blobs under two DEKs (a rotation in between), uuid and other ids."""
    w = make()
    pool = []
    for dek in (1, 2):
        w.states.set(TENANT, dek=dek)
        w.clock.advance(INTERVAL)
        page = [("user", "email", r, f"{dek} {r}".encode()) for r in _PAGE_IDS]
        blobs = w.env.encrypt_many(TENANT, page)
        pool += [(k, f, r, b) for (k, f, r, _), b in zip(page, blobs, strict=True)]
    return w, pool


_damage = st.one_of(
    st.just(("none", 0)),
    st.tuples(st.just("flip"), st.integers(0, 200)),
    st.tuples(st.just("cut"), st.integers(0, 60)),
    st.tuples(st.sampled_from(["format", "dek", "kind", "field", "id", "unknown dek"]), st.just(0)),
)


def _damaged(item: tuple[str, str, str, bytes], how: str, at: int):
    kind, field_, record_id, blob = item
    if how == "flip":
        at %= len(blob)
        return kind, field_, record_id, blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]
    if how == "cut":
        return kind, field_, record_id, blob[: at % (len(blob) + 1)]
    if how == "format":
        return kind, field_, record_id, bytes([3 - blob[0]]) + blob[1:]
    if how == "dek":  # the other DEK of the same tenant
        return (
            kind,
            field_,
            record_id,
            bytes([blob[0]]) + struct.pack(">Q", 3 - dek_id_of(blob)) + blob[9:],
        )
    if how == "unknown dek":
        return kind, field_, record_id, bytes([blob[0]]) + struct.pack(">Q", 77) + blob[9:]
    if how == "kind":
        return "device", field_, record_id, blob
    if how == "field":
        return kind, "phone", record_id, blob
    if how == "id":
        return kind, field_, RECORD if record_id != RECORD else OTHER, blob
    return item


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 9), _damage), min_size=1, max_size=8),
)
def test_decrypt_many_opens_and_refuses_exactly_what_decrypt_does(picks):
    """Whatever a page holds (DEKs and formats mixed, ids of other lengths, one blob
    altered, cut, relabelled or moved), the page's answer is the per-blob answer:
    every value, or the error of the first blob that does not open."""
    w, pool = _sealed_world()
    page = [_damaged(pool[i], how, at) for i, (how, at) in picks]
    single = [_outcome(lambda item=item: w.env.decrypt(TENANT, *item)) for item in page]
    first_error = next((o for o in single if isinstance(o, type)), None)
    expected = first_error if first_error is not None else single
    assert _outcome(lambda: w.env.decrypt_many(TENANT, page)) == expected


@settings(max_examples=200, deadline=None)
@given(
    page=st.lists(
        st.tuples(
            st.sampled_from(["user", "device"]),
            st.sampled_from(["email", "phone"]),
            st.sampled_from(_PAGE_IDS),
            st.binary(max_size=40),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_encrypt_many_writes_what_decrypt_opens_under_each_binding(page):
    w = make()
    blobs = w.env.encrypt_many(TENANT, page)
    assert len({b[9:21] for b in blobs}) == len(page)  # a nonce of its own each
    for (kind, field_, record_id, value), blob in zip(page, blobs, strict=True):
        assert w.env.decrypt(TENANT, kind, field_, record_id, blob) == value
        for other in {"user", "device"} - {kind}:
            with pytest.raises(CiphertextUnauthentic):
                w.env.decrypt(TENANT, other, field_, record_id, blob)
    assert w.env.take_counts() == {1: len(page)}


def test_a_page_of_one_binding_is_opened_whole_and_a_moved_blob_still_refused():
    w = make()
    records = [f"{n:036d}" for n in range(50)]
    page = [("user", "email", r, r.encode()) for r in records]
    sealed = [
        (k, f, r, b) for (k, f, r, _), b in zip(page, w.env.encrypt_many(TENANT, page), strict=True)
    ]
    assert w.env.decrypt_many(TENANT, sealed) == [r.encode() for r in records]
    # Two blobs swapped between records of the same length: the page's own
    # associated data carries each record's id, so neither opens.
    swapped = [*sealed[:10], (*sealed[10][:3], sealed[11][3]), *sealed[11:]]
    with pytest.raises(CiphertextUnauthentic):
        w.env.decrypt_many(TENANT, swapped)
    # The same blob under another tenant never opens, page or not.
    with pytest.raises((CiphertextUnauthentic, UnknownDataKey)):
        w.env.decrypt_many(OTHER, sealed)


def test_a_cut_blob_is_malformed_or_unauthentic_with_the_key_in_hand():
    """With the blob's key already in use (no check before the key is tried),
    a blob cut short of a ciphertext is still malformed and a longer cut one
    unauthentic, one at a time and in a page."""
    w = make()
    blob = w.env.encrypt(TENANT, "user", "email", RECORD, VALUE)
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE
    for length in range(len(blob)):
        expected = CiphertextMalformed if length < 37 else CiphertextUnauthentic
        with pytest.raises(expected):
            w.env.decrypt(TENANT, "user", "email", RECORD, blob[:length])
        with pytest.raises(expected):
            w.env.decrypt_many(TENANT, [("user", "email", RECORD, blob[:length])])
    assert w.env.decrypt(TENANT, "user", "email", RECORD, blob) == VALUE


def test_a_usual_page_is_opened_and_sealed_whole_from_the_first_call(monkeypatch):
    """The page path is taken on the first page after a state re-read too (the
    memo of keys is empty then), for sealing and for opening."""
    import crypto.envelope

    cut: list[int] = []
    real = crypto.envelope._aads

    def counted(prefix: bytes, rids: list[bytes], n: int) -> tuple[bytes, ...]:
        cut.append(len(rids))
        return real(prefix, rids, n)

    monkeypatch.setattr(crypto.envelope, "_aads", counted)
    w = make()
    page = [("user", "email", f"{n:036d}", b"v%d" % n) for n in range(20)]
    blobs = w.env.encrypt_many(TENANT, page)
    w.clock.advance(INTERVAL)  # the state is read again: a fresh, empty memo
    sealed = [(k, f, r, b) for (k, f, r, _), b in zip(page, blobs, strict=True)]
    assert w.env.decrypt_many(TENANT, sealed) == [v for *_, v in page]
    assert cut == [20, 20]  # one cut for the seal, one for the open
