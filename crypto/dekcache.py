"""The per-process cache of unwrapped data keys. Framework-free.

Unwrapped DEKs live only here, in memory, as the AES-GCM keys of the field
ciphertext formats (`FieldKeys`: the field key HKDF derives from the DEK,
and the DEK itself for reading format 1). They are derived once per unwrap,
never per record.

- TTL per tenant (the loader says how long): the bound on how long data stays
  readable after the customer cuts access to their key.
- Bounded size: beyond `max_entries`, the entries loaded longest ago go first.
- Single-flight: N threads missing the same DEK cause one unwrap; the others
  wait for its result (or its error).
- Refresh ahead: a hit after `refresh_fraction` of the TTL starts one
  background unwrap and keeps serving the current entry, so a hot key never
  stalls a request. A refresh that fails leaves the entry to expire on time:
  refreshing never extends how long a key the customer revoked stays usable.
- `drop_tenant` forgets a tenant's DEKs at once (epoch bump, revoke), and
  tells every `on_drop` listener, so that whatever holds keys it took from here
  (the envelope's per-tenant fast path) lets go of them in the same step.
- Counts hits, misses, unwraps and evictions as plain integers; the caller
  takes them (`take_stats`) and reports them wherever it likes, so the hot
  path pays an addition, not a metrics library's lock and file write.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from crypto.ciphertext import FieldKeys

logger = logging.getLogger(__name__)

Key = tuple[str, int]  # (tenant id, DEK id)


@dataclass(frozen=True)
class LoadedKey:
    """What a loader returns: the plaintext DEK and how long it may be cached."""

    material: bytes
    ttl: float

    def __repr__(self) -> str:
        return f"LoadedKey(<{len(self.material)} bytes>, ttl={self.ttl})"


Loader = Callable[[str, int], LoadedKey]
DropListener = Callable[[str | None], None]  # a tenant id, or None for everything


@dataclass(frozen=True)
class CacheStats:
    """Counts over an interval: `evicted` by the size bound, `dropped` by a revoke
    or epoch change (`drop_tenant`, `clear`)."""

    hits: int
    misses: int
    unwraps: int
    evicted: int
    dropped: int


class _Stats:
    __slots__ = ("dropped", "evicted", "hits", "misses", "unwraps")

    def __init__(self) -> None:
        self.hits = self.misses = self.unwraps = self.evicted = self.dropped = 0


class _Entry:
    __slots__ = ("expires", "keys", "refresh_at", "refreshing", "uses")

    def __init__(self, keys: FieldKeys, now: float, ttl: float, refresh_fraction: float) -> None:
        self.keys = keys
        self.expires = now + ttl
        self.refresh_at = now + ttl * refresh_fraction
        self.refreshing = False
        self.uses = 0  # hits since `take_uses`; an unlocked add, so a rare one is lost

    def __repr__(self) -> str:
        return f"<DEK cache entry expires={self.expires:.1f}>"


def _good_until(entry: _Entry, now: float) -> float:
    return entry.refresh_at if now < entry.refresh_at else entry.expires


class DekCache:
    def __init__(
        self,
        loader: Loader,
        *,
        max_entries: int = 10_000,
        refresh_fraction: float = 0.8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < refresh_fraction < 1:
            raise ValueError("refresh_fraction must be between 0 and 1")
        self._loader = loader
        self._max = max_entries
        self._refresh_fraction = refresh_fraction
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}
        self._inflight: dict[Key, Future[_Entry]] = {}
        # Bumped by drop_tenant: a load that began before a drop must not store.
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self.loads = 0  # unwraps performed, for tests and benchmarks
        self._misses: dict[str, int] = {}  # loads per tenant since `take_uses`
        self._listeners: list[DropListener] = []
        # Since the last take_stats(). Unlocked: a race may lose a hit or two,
        # which a rate does not notice; the lock stays off the hot path.
        self._stats = _Stats()

    def __repr__(self) -> str:
        return f"<DekCache {len(self._entries)} entries>"

    def hit(self, key: Key, now: float) -> FieldKeys | None:
        """The cached keys if they are fresh and need no refresh yet: the hot path."""
        entry = self._entries.get(key)
        if entry is not None and now < entry.refresh_at:
            entry.uses += 1
            self._stats.hits += 1
            return entry.keys
        return None

    def get(self, tenant_id: str, dek_id: int) -> FieldKeys:
        return self.lease(tenant_id, dek_id)[0]

    def lease(self, tenant_id: str, dek_id: int) -> tuple[FieldKeys, float]:
        """`get`, and the clock reading until which the keys may be reused without asking again.

        That is the entry's refresh time while it is ahead, else its expiry (a
        refresh is then under way): a caller that keeps the keys until then
        never uses them past the TTL and never holds off a refresh that is due.
        """
        key = (tenant_id, dek_id)
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            if now < entry.expires:
                if now >= entry.refresh_at and not entry.refreshing:
                    self._refresh(key, entry)
                entry.uses += 1
                self._stats.hits += 1
                return entry.keys, _good_until(entry, now)
        self._stats.misses += 1
        entry = self._load(key)
        return entry.keys, _good_until(entry, self._clock())

    def on_drop(self, listener: DropListener) -> None:
        """Call `listener(tenant_id)` after every drop_tenant, `listener(None)` after clear."""
        self._listeners.append(listener)

    def _load(self, key: Key) -> _Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() < entry.expires:
                return entry
            future = self._inflight.get(key)
            leader = future is None
            if future is None:
                future = Future()
                self._inflight[key] = future
            generation = self._generation.get(key[0], 0)
        if not leader:
            return future.result()
        try:
            entry = self._unwrap(key)
        except BaseException as exc:
            with self._lock:
                if self._inflight.get(key) is future:
                    del self._inflight[key]
            future.set_exception(exc)
            raise
        with self._lock:
            if self._inflight.get(key) is future:  # a drop may have started a newer load
                del self._inflight[key]
            if self._generation.get(key[0], 0) == generation:
                self._store(key, entry)
        future.set_result(entry)
        return entry

    def _unwrap(self, key: Key) -> _Entry:
        loaded = self._loader(*key)
        self.loads += 1
        with self._lock:
            self._misses[key[0]] = self._misses.get(key[0], 0) + 1
        self._stats.unwraps += 1
        # The one place a DEK becomes keys: HKDF runs here, once per unwrap.
        keys = FieldKeys(loaded.material)
        return _Entry(keys, self._clock(), loaded.ttl, self._refresh_fraction)

    def _store(self, key: Key, entry: _Entry) -> None:
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]
            self._stats.evicted += 1

    def _refresh(self, key: Key, entry: _Entry) -> None:
        with self._lock:
            if entry.refreshing:
                return
            entry.refreshing = True
        self._pool().submit(self._refresh_now, key, entry)

    def _refresh_now(self, key: Key, old: _Entry) -> None:
        generation = self._generation.get(key[0], 0)
        try:
            fresh = self._unwrap(key)
        except Exception as exc:  # the old entry expires on time; the next miss reports
            logger.warning("background refresh of a data key failed: %s", type(exc).__name__)
            return
        with self._lock:
            # Not dropped meanwhile (revoke, epoch bump): only then replace.
            if self._entries.get(key) is old and self._generation.get(key[0], 0) == generation:
                self._store(key, fresh)

    def _pool(self) -> ThreadPoolExecutor:
        # Threads do not survive fork(): a forked worker makes its own pool.
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dek-refresh")
            self._executor_pid = os.getpid()
        return self._executor

    def drop_tenant(self, tenant_id: str) -> None:
        with self._lock:
            self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
            for key in [k for k in self._entries if k[0] == tenant_id]:
                del self._entries[key]
                self._stats.dropped += 1
            for key in [k for k in self._inflight if k[0] == tenant_id]:
                del self._inflight[key]  # later gets start a fresh load
        for listener in self._listeners:
            listener(tenant_id)

    def clear(self) -> None:
        with self._lock:
            for tenant_id in {k[0] for k in self._entries} | set(self._inflight_tenants()):
                self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
            self._stats.dropped += len(self._entries)
            self._entries.clear()
            self._inflight.clear()
        for listener in self._listeners:
            listener(None)

    def take_stats(self) -> CacheStats:
        """What happened since the last call (a batch for a metrics exporter)."""
        with self._lock:
            taken, self._stats = self._stats, _Stats()
        return CacheStats(taken.hits, taken.misses, taken.unwraps, taken.evicted, taken.dropped)

    def _inflight_tenants(self) -> list[str]:
        return [k[0] for k in self._inflight]

    def take_uses(self) -> dict[str, tuple[int, int]]:
        """(hits, misses) per tenant since the last call, for usage figures.

        Hits of entries evicted or dropped meanwhile are not reported: the
        figures are for charts, and counting them exactly would put a lock on
        the hot path.
        """
        with self._lock:
            misses, self._misses = self._misses, {}
            entries = list(self._entries.items())
        uses: dict[str, tuple[int, int]] = {t: (0, n) for t, n in misses.items()}
        for (tenant_id, _dek), entry in entries:
            hits, entry.uses = entry.uses, 0
            if hits:
                before = uses.get(tenant_id, (0, 0))
                uses[tenant_id] = (before[0] + hits, before[1])
        return uses

    def __len__(self) -> int:
        return len(self._entries)
