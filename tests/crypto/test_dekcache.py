"""The per-process DEK cache (crypto.dekcache): fake clocks; real threads where racing matters."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto import ciphertext
from crypto.ciphertext import FORMAT_V1, FieldKeys, field_key
from crypto.dekcache import DekCache, LoadedKey

TENANT = "tenant-a"
OTHER = "tenant-b"


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LoaderFailed(Exception):
    pass


class Loader:
    """Hands out a fresh random DEK per call; records calls; can sleep, block or fail."""

    def __init__(self, ttl: float = 100.0, ttls: dict[str, float] | None = None) -> None:
        self.ttl = ttl
        self.ttls = ttls or {}
        self.calls: list[tuple[str, int]] = []
        self.issued: list[bytes] = []
        self.delay = 0.0
        self.fail: Exception | None = None
        self.before: Callable[[], None] | None = None  # runs inside the loader call
        self._lock = threading.Lock()

    def __call__(self, tenant_id: str, dek_id: int) -> LoadedKey:
        with self._lock:
            self.calls.append((tenant_id, dek_id))
        if self.before is not None:
            self.before()
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        material = AESGCM.generate_key(256)
        with self._lock:
            self.issued.append(material)
        return LoadedKey(material, self.ttls.get(tenant_id, self.ttl))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.calls)


def same_aes_key(aead: AESGCM, key: bytes) -> bool:
    nonce = os.urandom(12)
    try:
        AESGCM(key).decrypt(nonce, aead.encrypt(nonce, b"probe", None), None)
    except InvalidTag:
        return False
    return True


def same_key(keys: FieldKeys, material: bytes) -> bool:
    """`keys` are the field keys of DEK `material`: its derived key seals, itself opens format 1."""
    return same_aes_key(keys.sealing, field_key(material)) and same_aes_key(
        keys.opening[FORMAT_V1], material
    )


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


def make(loader: Loader | None = None, **kwargs) -> tuple[DekCache, Loader, FakeClock]:
    loader = loader or Loader()
    clock = FakeClock()
    return DekCache(loader, clock=clock, **kwargs), loader, clock


# -- hits, misses, TTL ----------------------------------------------------------


def test_miss_then_hit():
    cache, loader, _ = make()
    first = cache.get(TENANT, 1)
    assert loader.calls == [(TENANT, 1)]
    assert same_key(first, loader.issued[0])
    assert cache.get(TENANT, 1) is first
    assert loader.count == 1
    assert len(cache) == 1
    assert cache.loads == 1


def test_entries_are_per_tenant_and_dek():
    cache, loader, _ = make()
    a1, a2, b1 = cache.get(TENANT, 1), cache.get(TENANT, 2), cache.get(OTHER, 1)
    assert loader.calls == [(TENANT, 1), (TENANT, 2), (OTHER, 1)]
    assert len({id(a1), id(a2), id(b1)}) == 3
    assert cache.get(OTHER, 1) is b1
    assert loader.count == 3


def test_entry_expires_after_its_ttl():
    cache, loader, clock = make(Loader(ttl=60.0))
    first = cache.get(TENANT, 1)
    clock.advance(30.0)  # before the refresh point (48 s)
    assert cache.get(TENANT, 1) is first
    clock.advance(30.0)  # exactly the TTL: expired
    second = cache.get(TENANT, 1)
    assert loader.count == 2
    assert second is not first
    assert same_key(second, loader.issued[1])


def test_ttl_comes_from_the_loader_per_tenant():
    cache, loader, clock = make(Loader(ttls={TENANT: 10.0, OTHER: 100.0}))
    short, long = cache.get(TENANT, 1), cache.get(OTHER, 1)
    clock.advance(9.9)
    assert cache.get(TENANT, 1) is short
    clock.advance(0.1)
    assert cache.get(OTHER, 1) is long  # 10 s is nothing for a 100 s TTL
    assert cache.get(TENANT, 1) is not short
    assert loader.calls == [(TENANT, 1), (OTHER, 1), (TENANT, 1)]


def test_size_is_bounded_and_the_oldest_loaded_goes_first():
    cache, loader, _ = make(max_entries=2)
    first = cache.get(TENANT, 1)
    cache.get(TENANT, 2)
    assert cache.get(TENANT, 1) is first  # a hit does not make an entry younger
    cache.get(TENANT, 3)
    assert len(cache) == 2
    assert loader.count == 3
    cache.get(TENANT, 3)
    cache.get(TENANT, 2)
    assert loader.count == 3  # 2 and 3 stayed
    assert cache.get(TENANT, 1) is not first  # 1 was evicted: loaded again...
    assert loader.count == 4
    assert len(cache) == 2
    cache.get(TENANT, 3)
    assert loader.count == 4  # ...which evicted 2, now the oldest loaded
    cache.get(TENANT, 2)
    assert loader.count == 5


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_refresh_fraction_must_be_inside_0_1(fraction):
    with pytest.raises(ValueError):
        DekCache(Loader(), refresh_fraction=fraction)


# -- single flight --------------------------------------------------------------


def run_threads(
    count: int, target: Callable[[], object]
) -> tuple[list[object], list[BaseException]]:
    barrier = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        try:
            value = target()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
    assert not any(thread.is_alive() for thread in threads)
    return results, errors


def test_single_flight_many_threads_one_unwrap():
    loader = Loader()
    loader.delay = 0.15
    cache = DekCache(loader)
    results, errors = run_threads(20, lambda: cache.get(TENANT, 1))
    assert errors == []
    assert loader.count == 1
    assert len(results) == 20
    assert all(result is results[0] for result in results)
    assert cache.get(TENANT, 1) is results[0]


def test_single_flight_error_reaches_every_waiter_and_the_next_get_retries():
    loader = Loader()
    loader.delay = 0.15
    loader.fail = LoaderFailed("key store unreachable")
    cache = DekCache(loader)
    results, errors = run_threads(20, lambda: cache.get(TENANT, 1))
    assert results == []
    assert len(errors) == 20
    assert all(isinstance(error, LoaderFailed) for error in errors)
    assert loader.count == 1
    assert len(cache) == 0

    loader.fail, loader.delay = None, 0.0
    keys = cache.get(TENANT, 1)
    assert loader.count == 2
    assert same_key(keys, loader.issued[0])


# -- refresh ahead --------------------------------------------------------------


def test_refresh_ahead_serves_the_current_entry_and_reloads_once_in_the_background():
    cache, loader, clock = make(Loader(ttl=100.0), refresh_fraction=0.8)
    first = cache.get(TENANT, 1)
    clock.advance(79.0)
    assert cache.get(TENANT, 1) is first
    assert loader.count == 1  # before refresh_fraction of the TTL: nothing

    release, entered = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        assert release.wait(5.0)

    loader.before = block
    clock.advance(6.0)  # t = 85 s
    assert cache.get(TENANT, 1) is first  # returned while the reload is blocked
    assert entered.wait(2.0)
    for _ in range(10):
        assert cache.get(TENANT, 1) is first
    assert loader.count == 2  # exactly one background reload
    release.set()

    wait_until(lambda: cache.get(TENANT, 1) is not first)
    fresh = cache.get(TENANT, 1)
    assert same_key(fresh, loader.issued[1])
    assert loader.count == 2
    loader.before = None

    clock.advance(64.0)  # t = 149 s: the old entry would be gone, the new one lives
    assert cache.get(TENANT, 1) is fresh
    assert loader.count == 2
    clock.advance(36.0)  # t = 185 s: 100 s after the reload, the new entry expires
    assert cache.get(TENANT, 1) is not fresh
    assert loader.count == 3


def test_failing_refresh_does_not_extend_the_expiry(caplog):
    cache, loader, clock = make(Loader(ttl=100.0), refresh_fraction=0.8)
    first = cache.get(TENANT, 1)
    loader.fail = LoaderFailed("access denied")
    caplog.set_level(logging.WARNING, logger="crypto.dekcache")
    clock.advance(85.0)
    assert cache.get(TENANT, 1) is first
    wait_until(lambda: loader.count == 2)
    wait_until(lambda: "background refresh of a data key failed" in caplog.text)
    assert "access denied" not in caplog.text  # only the error's type is logged

    clock.advance(14.9)  # t = 99.9 s: still the original entry, no new attempt
    assert cache.get(TENANT, 1) is first
    assert loader.count == 2
    clock.advance(0.1)  # t = 100 s: the original expiry holds
    with pytest.raises(LoaderFailed):
        cache.get(TENANT, 1)
    assert loader.count == 3
    with pytest.raises(LoaderFailed):
        cache.get(TENANT, 1)
    assert loader.count == 4


# -- drop -----------------------------------------------------------------------


def test_drop_tenant_removes_only_that_tenant():
    cache, loader, _ = make()
    a1, _a2, b1 = cache.get(TENANT, 1), cache.get(TENANT, 2), cache.get(OTHER, 1)
    cache.drop_tenant(TENANT)
    assert len(cache) == 1
    assert cache.get(OTHER, 1) is b1
    assert loader.count == 3
    assert cache.get(TENANT, 1) is not a1
    assert loader.count == 4


def start_blocked_load(cache: DekCache, loader: Loader) -> tuple[threading.Event, dict, Callable]:
    """A get() whose loader call blocks until the returned event is set."""
    release, entered = threading.Event(), threading.Event()

    def block() -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(5.0)

    loader.before = block
    out: dict[str, object] = {}
    thread = threading.Thread(target=lambda: out.setdefault("keys", cache.get(TENANT, 1)))
    thread.start()
    assert entered.wait(2.0)
    return release, out, lambda: thread.join(5.0)


def test_load_started_before_drop_tenant_is_not_stored():
    cache, loader, _ = make()
    release, out, join = start_blocked_load(cache, loader)
    cache.drop_tenant(TENANT)
    release.set()
    join()
    assert same_key(out["keys"], loader.issued[0])  # the caller still gets its answer
    assert len(cache) == 0
    again = cache.get(TENANT, 1)
    assert loader.count == 2
    assert same_key(again, loader.issued[1])


def test_get_after_drop_tenant_does_not_join_a_load_started_before() -> None:
    """BUG: after drop_tenant, a get() joins the in-flight future of a load that began
    before the drop, and is served a key unwrapped before the drop."""
    cache, loader, _ = make()
    release, before, join = start_blocked_load(cache, loader)
    cache.drop_tenant(TENANT)
    later: dict[str, FieldKeys] = {}
    thread = threading.Thread(target=lambda: later.setdefault("keys", cache.get(TENANT, 1)))
    thread.start()
    time.sleep(0.05)
    release.set()
    join()
    thread.join(5.0)
    assert loader.count == 2  # the get after the drop unwrapped anew
    assert later["keys"] is not before["keys"]
    assert cache.get(TENANT, 1) is later["keys"]  # and only that load was stored


def test_clear_forgets_everything_and_in_flight_loads():
    cache, loader, _ = make()
    cache.get(OTHER, 1)
    release, _, join = start_blocked_load(cache, loader)
    cache.clear()
    assert len(cache) == 0
    release.set()
    join()
    assert len(cache) == 0
    cache.get(OTHER, 1)
    assert loader.count == 3


def test_refresh_result_is_not_stored_after_drop_tenant():
    cache, loader, clock = make(Loader(ttl=100.0), refresh_fraction=0.5)
    cache.get(TENANT, 1)
    release, entered = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        assert release.wait(5.0)

    loader.before = block
    clock.advance(60.0)
    cache.get(TENANT, 1)  # starts the background refresh, which blocks
    assert entered.wait(2.0)
    cache.drop_tenant(TENANT)
    release.set()
    wait_until(lambda: len(loader.issued) == 2)
    time.sleep(0.02)  # let the refresh thread reach its store decision
    assert len(cache) == 0


# -- the field keys -------------------------------------------------------------


def test_field_key_is_derived_once_per_unwrap_not_per_get(monkeypatch: pytest.MonkeyPatch) -> None:
    derivations: list[int] = []
    real = ciphertext.field_key

    def counted(dek: bytes) -> bytes:
        derivations.append(1)
        return real(dek)

    monkeypatch.setattr(ciphertext, "field_key", counted)
    cache, loader, clock = make(Loader(ttl=100.0))
    for _ in range(1000):
        keys = cache.get(TENANT, 1)
        assert cache.hit((TENANT, 1), clock()) is keys
    assert len(derivations) == loader.count == 1
    clock.advance(100.0)  # expired: the next get unwraps, and derives, once more
    cache.get(TENANT, 1)
    assert len(derivations) == loader.count == 2


# -- no key bytes in reprs ------------------------------------------------------


def test_repr_never_contains_key_bytes():
    material = bytes(range(32))
    loaded = LoadedKey(material, 300.0)
    cache = DekCache(lambda tenant, dek: loaded)
    cache.get(TENANT, 1)
    texts = [repr(cache), str(cache), repr(loaded), str(loaded), repr([loaded]), f"{loaded}"]
    forms = [
        form
        for key in (material, field_key(material))
        for form in (repr(key), key.hex(), base64.b64encode(key).decode(), str(key))
    ]
    texts += [repr(cache.get(TENANT, 1)), str(cache.get(TENANT, 1))]
    for text in texts:
        for form in forms:
            assert form not in text
    assert repr(loaded) == "LoadedKey(<32 bytes>, ttl=300.0)"
    assert "1 entries" in repr(cache)


def test_stats_count_hits_misses_unwraps_evictions_and_drops_once() -> None:
    clock = FakeClock()
    cache = DekCache(Loader(ttl=100.0), max_entries=2, clock=clock)
    cache.get(TENANT, 1)  # miss, unwrap
    cache.get(TENANT, 1)  # hit
    assert cache.hit((TENANT, 1), clock()) is not None  # hit (the hot path)
    assert cache.hit((TENANT, 9), clock()) is None  # not a miss: get() follows and counts
    cache.get(TENANT, 2)
    cache.get(TENANT, 3)  # over the bound: the oldest goes
    stats = cache.take_stats()
    assert (stats.hits, stats.misses, stats.unwraps, stats.evicted, stats.dropped) == (
        2,
        3,
        3,
        1,
        0,
    )
    cache.drop_tenant(TENANT)  # a revoke: both remaining entries
    stats = cache.take_stats()
    assert (stats.hits, stats.misses, stats.unwraps, stats.evicted, stats.dropped) == (
        0,
        0,
        0,
        0,
        2,
    )
    assert cache.take_stats().hits == 0  # taken means reset


def test_a_background_refresh_counts_as_an_unwrap_not_a_miss() -> None:
    clock = FakeClock()
    loader = Loader(ttl=100.0)
    cache = DekCache(loader, clock=clock)
    cache.get(TENANT, 1)
    cache.take_stats()
    clock.advance(90)  # past the refresh point, before expiry
    cache.get(TENANT, 1)
    hits = misses = unwraps = 0
    deadline = time.monotonic() + 5
    while unwraps == 0 and time.monotonic() < deadline:
        stats = cache.take_stats()
        hits, misses, unwraps = hits + stats.hits, misses + stats.misses, unwraps + stats.unwraps
        time.sleep(0.01)
    assert (hits, misses, unwraps) == (1, 0, 1)
