"""A circuit breaker per key store endpoint: a store that stopped answering is left alone.

Ten thousand tenants on one AWS region, vault or KMIP server that went away
would otherwise each wait out the timeouts and retries of every call, every
health round and every cache miss, and hammer the store the moment it comes
back. So every call of a customer key store goes through the circuit of its
endpoint (`provider_for` wraps the provider):

1. Closed: calls pass. A `KeyUnavailable` counts a failure; any answer of the
   store (a success, but also a denial or a refusal of the wrapped bytes,
   which prove it is reachable) resets the count.
2. `failures` in a row open it for a back-off: `base` seconds, doubled at each
   opening in a row up to `ceiling`, with jitter (a random 50 to 100 %), so the
   processes that opened together do not probe together.
3. Open: calls fail at once with `KeyUnavailable` (the tenant is degraded,
   never revoked; cached data keys keep serving) and reach nothing.
4. When the back-off ends, one call at a time goes through as a probe: a
   store that answers closes the circuit (and the back-off starts again from
   `base` next time); one that fails opens it again, for longer.

State is per process, on purpose: the circuit must work when Redis (or
whatever would share it) is the thing that is down, and must not add a
network round trip to every key-store call. The price is a bound per process
rather than per fleet: each worker makes at most `failures` failing calls,
then a probe per back-off, whatever the number of tenants.

A success by any tenant resets the count, so one tenant's broken key does not
open the circuit of an endpoint that others use successfully; where an endpoint
serves one tenant only (a KMIP server), its circuit is that tenant's.

Framework-free: the registry passes the settings in.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from keys.providers.base import KeyProvider, KeyProviderError, KeyUnavailable
from telemetry.metrics import KEY_STORE_CIRCUIT_OPENED, KEY_STORE_SHORT_CIRCUITED

# Provider methods that reach the key store through the circuit. "Save and Test"
# (run_checks) is a person asking now, and reports rather than raises: it passes.
GUARDED = frozenset(
    {
        "wrap",
        "unwrap",
        "health",
        "describe",
        "current_version",
        "rewrap",
        "reencrypt",
        "rotate_now",
        "prepare_enable",
    }
)


@dataclass(frozen=True)
class CircuitSettings:
    failures: int = 5
    base: float = 2.0
    ceiling: float = 60.0


class CircuitOpen(KeyUnavailable):
    """The endpoint failed repeatedly: the call was not made. Transient, like any outage."""


class Circuit:
    """One endpoint's breaker. Thread-safe; `clock` and `rng` are for tests."""

    def __init__(
        self,
        endpoint: str,
        settings: CircuitSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._failures = 0  # in a row, while closed
        self._openings = 0  # in a row, without a success between
        self._open_until: float | None = None
        self._probing = False
        self.backoffs: list[float] = []  # each back-off chosen (figures and tests)

    def close(self) -> None:
        """Back to closed, with no failure counted."""
        with self._lock:
            self._failures = 0
            self._openings = 0
            self._open_until = None
            self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None

    def _backoff(self) -> float:
        s = self.settings
        delay = min(s.ceiling, s.base * 2 ** max(self._openings - 1, 0))
        return delay * self._rng.uniform(0.5, 1.0)

    def before(self) -> bool:
        """May a call go now? True for a probe. Raises `CircuitOpen` while open."""
        with self._lock:
            if self._open_until is None:
                return False
            now = self._clock()
            if now < self._open_until or self._probing:
                # No countdown in the message: the health check keeps one row per
                # distinct finding, and an outage is one finding.
                raise CircuitOpen(
                    f"the key store at {self.endpoint} did not answer repeatedly; Keyward "
                    "calls it again after a back-off"
                )
            self._probing = True
            return True

    def succeeded(self, probe: bool) -> None:
        with self._lock:
            self._failures = 0
            self._openings = 0
            self._open_until = None
            if probe:
                self._probing = False

    def failed(self, probe: bool) -> None:
        opened = False
        with self._lock:
            if probe:
                self._probing = False
            if self._open_until is not None and not probe:
                return  # a call that started before the circuit opened
            self._failures += 1
            if probe or self._failures >= self.settings.failures:
                self._openings += 1
                delay = self._backoff()
                self.backoffs.append(delay)
                self._open_until = self._clock() + delay
                self._failures = 0
                opened = True
        if opened:
            KEY_STORE_CIRCUIT_OPENED.inc()

    def released(self, probe: bool) -> None:
        """A probe ended in an error that says nothing about the store: let another try."""
        if probe:
            with self._lock:
                self._probing = False

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        probe = self.before()
        try:
            result = fn(*args, **kwargs)
        except KeyUnavailable:
            self.failed(probe)
            raise
        except KeyProviderError:
            self.succeeded(probe)  # denied or invalid: the store answered
            raise
        except BaseException:
            self.released(probe)
            raise
        self.succeeded(probe)
        return result


class _GuardedProvider:
    """A provider whose key-store calls go through its endpoint's circuit."""

    def __init__(self, provider: KeyProvider, circuit: Circuit) -> None:
        self._provider = provider
        self._circuit = circuit

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._provider, name)
        if name not in GUARDED or not callable(value):
            return value
        circuit = self._circuit
        kind = str(getattr(self._provider, "kind", "") or "unknown")

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return circuit.call(value, *args, **kwargs)
            except CircuitOpen:
                KEY_STORE_SHORT_CIRCUITED.labels(kind, name).inc()
                raise

        return guarded

    def __repr__(self) -> str:
        return repr(self._provider)


_lock = threading.Lock()
_circuits: dict[str, Circuit] = {}


def circuit_for(endpoint: str, settings: CircuitSettings) -> Circuit:
    """This process's circuit of `endpoint`; new settings make a new one."""
    with _lock:
        circuit = _circuits.get(endpoint)
        if circuit is None or circuit.settings != settings:
            circuit = _circuits[endpoint] = Circuit(endpoint, settings)
        return circuit


def guarded(provider: KeyProvider, circuit: Circuit) -> KeyProvider:
    return cast(KeyProvider, _GuardedProvider(provider, circuit))


def reset_circuits() -> None:
    """Forget every circuit (as a restart would).

    Providers cached in the registry hold their circuit: each is closed too,
    not only dropped from the table.
    """
    with _lock:
        for circuit in _circuits.values():
            circuit.close()
        _circuits.clear()
