"""The key store circuit on its own: a fake clock, a provider that fails on demand."""

from __future__ import annotations

import random
from typing import Any

import pytest

from keys.circuit import Circuit, CircuitOpen, CircuitSettings, guarded
from keys.providers.base import KeyAccessDenied, KeyUnavailable, Wrapped


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A provider-shaped key store that is up, down or denying."""

    kind = "test"

    def __init__(self) -> None:
        self.answer: str = "ok"
        self.calls = 0

    def wrap(self, dek: bytes, context: Any) -> Wrapped:
        self.calls += 1
        if self.answer == "down":
            raise KeyUnavailable("connection refused")
        if self.answer == "denied":
            raise KeyAccessDenied("disabled")
        if self.answer == "bug":
            raise RuntimeError("not about the store")
        return Wrapped(b"blob", "v1")

    def run_checks(self, context: Any) -> list[Any]:
        self.calls += 1
        return []


SETTINGS = CircuitSettings(failures=3, base=10.0, ceiling=40.0)


def make(seed: int = 1) -> tuple[Any, Store, Circuit, Clock]:
    clock = Clock()
    store = Store()
    circuit = Circuit("test endpoint", SETTINGS, clock=clock, rng=random.Random(seed))
    return guarded(store, circuit), store, circuit, clock  # type: ignore[arg-type]


def fail(provider: Any, times: int) -> None:
    for _ in range(times):
        with pytest.raises(KeyUnavailable):
            provider.wrap(b"k" * 32, {})


def test_failures_in_a_row_open_it_then_calls_fail_fast_without_reaching_the_store() -> None:
    provider, store, circuit, _ = make()
    store.answer = "down"
    fail(provider, 3)
    assert circuit.is_open and store.calls == 3
    for _ in range(100):
        with pytest.raises(CircuitOpen, match="did not answer repeatedly"):
            provider.wrap(b"k" * 32, {})
    assert store.calls == 3  # a hundred tenants asked; the store saw none of them


def test_an_answer_resets_the_count_so_one_broken_tenant_does_not_open_it() -> None:
    provider, store, circuit, _ = make()
    for _ in range(10):
        store.answer = "down"
        fail(provider, 2)
        store.answer = "ok"
        provider.wrap(b"k" * 32, {})
    store.answer = "denied"  # the store answered: reachable
    for _ in range(5):
        with pytest.raises(KeyAccessDenied):
            provider.wrap(b"k" * 32, {})
    assert not circuit.is_open


def test_after_the_backoff_one_probe_goes_and_a_success_closes_it() -> None:
    provider, store, circuit, clock = make()
    store.answer = "down"
    fail(provider, 3)
    (first,) = circuit.backoffs
    assert SETTINGS.base / 2 <= first <= SETTINGS.base
    clock.now += first + 0.01
    store.answer = "ok"
    assert provider.wrap(b"k" * 32, {}).version == "v1"  # the probe
    assert not circuit.is_open
    assert store.calls == 4


def test_a_failed_probe_opens_it_again_for_longer_up_to_the_ceiling() -> None:
    provider, store, circuit, clock = make()
    store.answer = "down"
    fail(provider, 3)
    for _ in range(6):
        clock.now += circuit.backoffs[-1] + 0.01
        fail(provider, 1)  # the probe fails: one call reached the store
    assert store.calls == 3 + 6
    ceilings = [min(SETTINGS.ceiling, SETTINGS.base * 2**i) for i in range(7)]
    for backoff, ceiling in zip(circuit.backoffs, ceilings, strict=True):
        assert ceiling / 2 <= backoff <= ceiling
    assert max(circuit.backoffs) <= SETTINGS.ceiling


def test_only_one_probe_at_a_time() -> None:
    _, store, circuit, clock = make()
    store.answer = "down"
    for _ in range(3):
        circuit.failed(circuit.before())
    clock.now += circuit.backoffs[-1] + 0.01
    assert circuit.before() is True  # the probe is out
    with pytest.raises(CircuitOpen):
        circuit.before()  # another caller meanwhile fails fast
    circuit.released(True)  # the probe hit an error that says nothing about the store
    assert circuit.before() is True


def test_an_error_that_is_not_the_store_counts_nothing() -> None:
    provider, store, circuit, _ = make()
    store.answer = "bug"
    for _ in range(5):
        with pytest.raises(RuntimeError):
            provider.wrap(b"k" * 32, {})
    assert not circuit.is_open


def test_save_and_test_is_not_held_back_by_an_open_circuit() -> None:
    provider, store, _, _ = make()
    store.answer = "down"
    fail(provider, 3)
    assert provider.run_checks({}) == []  # a person testing the key reaches the store
    assert store.calls == 4 and provider.kind == "test"


def test_backoffs_carry_jitter() -> None:
    chosen = set()
    for seed in range(20):
        provider, store, circuit, _ = make(seed)
        store.answer = "down"
        fail(provider, 3)
        chosen.add(round(circuit.backoffs[0], 6))
    assert len(chosen) == 20  # processes that opened together do not probe together
    assert all(SETTINGS.base / 2 <= b <= SETTINGS.base for b in chosen)
