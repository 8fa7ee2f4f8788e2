"""Hourly key usage per tenant: key-store calls by operation and outcome, DEK cache use.

Every provider that `provider_for` hands out is wrapped so that each call to the
key store is counted where it happens (here, and as Prometheus metrics by
provider kind, operation and outcome, with its latency), and the envelope's DEK
cache reports its hits and loads. Counts gather in memory and are written by a background thread
as one upsert per (tenant, hour, kind, outcome), so the hot path never waits for
the database and the console's charts read one small table instead of the audit
trail.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, cast

from django.conf import settings
from django.db import connection

from keys.consumers import counts_by_dek
from keys.models import DataKey, DataKeyVolume, TenantStateDay
from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyProvider,
    KeyUnavailable,
)
from keys.selectors.sources import LIVE_DEK_STATES
from telemetry.metrics import KEY_STORE_CALLS, KEY_STORE_DURATION
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Provider methods that reach the key store, and the names the charts give them.
KEY_STORE_OPERATIONS = {
    "wrap": "Wrap",
    "unwrap": "Unwrap",
    "health": "Health check",
    "run_checks": "Test",
    "describe": "Describe",
    "current_version": "Version",
    "rewrap": "Rewrap",
    "reencrypt": "Re-encrypt",
    "rotate_now": "Rotate",
    "prepare_enable": "Prepare",
}
# The DEK cache's rows: `kind` "cache", `outcome` "hit" or "miss".
CACHE = "cache"
OK, ERROR, HIT, MISS = "ok", "error", "hit", "miss"

_Key = tuple[str, int, str, str]  # tenant id, hour (epoch seconds), kind, outcome

_lock = threading.Lock()
_pending: Counter[_Key] = Counter()
_flusher_pid = 0


def _hour(now: float) -> int:
    return int(now // 3600 * 3600)


_reporters: list[Callable[[], None]] = []


def report_before_flush(reporter: Callable[[], None]) -> None:
    """Have `reporter` hand over its counts (through `note`) before each flush."""
    if reporter not in _reporters:
        _reporters.append(reporter)


def note(tenant_id: str, kind: str, outcome: str, n: int = 1) -> None:
    """Count `n` uses; written to the database within one flush interval."""
    if n <= 0:
        return
    _ensure_flusher()
    key = (str(tenant_id), _hour(time.time()), kind, outcome)
    with _lock:
        _pending[key] += n


def note_cache(uses: dict[str, tuple[int, int]]) -> None:
    """The DEK cache's (hits, misses) per tenant since its last report."""
    for tenant_id, (hits, misses) in uses.items():
        note(tenant_id, CACHE, HIT, hits)
        note(tenant_id, CACHE, MISS, misses)


class _CountedProvider:
    """A provider whose key-store calls are counted for its tenant."""

    def __init__(self, provider: KeyProvider, tenant_id: str) -> None:
        self._provider = provider
        self._tenant_id = tenant_id

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._provider, name)
        if name not in KEY_STORE_OPERATIONS or not callable(value):
            return value
        return self._counted(name, value)

    def _counted(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        kind = str(getattr(self._provider, "kind", "") or "unknown")

        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = call(*args, **kwargs)
            except Exception as exc:
                note(self._tenant_id, name, ERROR)
                _observe(kind, name, outcome_of(exc), started)
                raise
            note(self._tenant_id, name, OK)
            _observe(kind, name, "success", started)
            return result

        return counted

    def __repr__(self) -> str:
        return repr(self._provider)


# The provider error contract (keys/providers/base.py), as metric outcomes.
_OUTCOMES: tuple[tuple[type[Exception], str], ...] = (
    (KeyUnavailable, "unavailable"),
    (KeyAccessDenied, "denied"),
    (KeyMaterialInvalid, "invalid"),
)


def outcome_of(exc: Exception) -> str:
    for kind, label in _OUTCOMES:
        if isinstance(exc, kind):
            return label
    return "error"


def _observe(kind: str, operation: str, outcome: str, started: float) -> None:
    KEY_STORE_DURATION.labels(kind, operation).observe(time.perf_counter() - started)
    KEY_STORE_CALLS.labels(kind, operation, outcome).inc()


def counted(provider: KeyProvider, tenant_id: str) -> KeyProvider:
    return cast(KeyProvider, _CountedProvider(provider, tenant_id))


def take_pending() -> Counter[_Key]:
    global _pending
    with _lock:
        taken, _pending = _pending, Counter()
    return taken


def flush_usage() -> None:
    """Write what this process counted since the last flush, in one statement."""
    for reporter in _reporters:
        reporter()
    taken = take_pending()
    if not taken:
        return
    rows = [
        (tenant_id, datetime.fromtimestamp(hour, UTC), kind, outcome, n)
        for (tenant_id, hour, kind, outcome), n in taken.items()
    ]
    try:
        with connection.cursor() as cursor:
            # PostgreSQL and SQLite both take this upsert; the tenant may have
            # been removed meanwhile, so only existing tenants are written.
            cursor.executemany(
                "INSERT INTO keys_keyusagehour (tenant_id, hour, kind, outcome, count) "
                "SELECT %s, %s, %s, %s, %s WHERE EXISTS "
                "(SELECT 1 FROM tenants_tenant WHERE id = %s) "
                "ON CONFLICT (tenant_id, hour, kind, outcome) "
                "DO UPDATE SET count = keys_keyusagehour.count + excluded.count",
                [(t, h, k, o, n, t) for t, h, k, o, n in rows],
            )
    except Exception as exc:
        # Usage figures are for charts: losing one interval's counts beats
        # holding them forever or failing the work that made them.
        logger.warning("could not write key usage counts (%s)", type(exc).__name__)


def _flush_loop() -> None:
    while True:
        time.sleep(settings.KEYWARD_COUNT_FLUSH_SECONDS)
        flush_usage()
        connection.close()


def _flush_at_exit() -> None:
    logging.disable(logging.CRITICAL)
    with contextlib.suppress(Exception):
        flush_usage()


def _ensure_flusher() -> None:
    global _flusher_pid
    if _flusher_pid == os.getpid():
        return
    with _lock:
        if _flusher_pid == os.getpid():
            return
        if _flusher_pid == 0:
            atexit.register(_flush_at_exit)
        else:
            _pending.clear()  # a forked child: those counts are the parent's to write
        _flusher_pid = os.getpid()
    # A forked worker counts for itself: the parent's thread did not come along.
    threading.Thread(target=_flush_loop, name="key-usage-flush", daemon=True).start()


def sample_volumes(day: date) -> int:
    """Record, for `day`, how much data depends on each live data key and how many
    tenants are in each state; a later sample of the same day replaces it.

    Returns the number of data keys sampled.
    """
    rows: list[DataKeyVolume] = []
    deks = DataKey.objects.filter(state__in=LIVE_DEK_STATES).order_by("tenant_id", "version")
    by_tenant: dict[str, list[DataKey]] = {}
    for dek in deks:
        by_tenant.setdefault(str(dek.tenant_id), []).append(dek)
    for tenant in Tenant.objects.filter(pk__in=list(by_tenant)):
        counts = counts_by_dek(tenant)
        for dek in by_tenant[str(tenant.pk)]:
            rows.append(
                DataKeyVolume(
                    tenant=tenant,
                    data_key=dek,
                    day=day,
                    records=counts.get("records", {}).get(dek.pk, 0),
                    stored_objects=counts.get("objects", {}).get(dek.pk, 0),
                )
            )
    DataKeyVolume.objects.bulk_create(
        rows,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["data_key", "day"],
        update_fields=["records", "stored_objects"],
    )
    states = Counter(Tenant.objects.values_list("state", flat=True))
    TenantStateDay.objects.bulk_create(
        [TenantStateDay(day=day, state=state, tenants=n) for state, n in states.items()],
        update_conflicts=True,
        unique_fields=["day", "state"],
        update_fields=["tenants"],
    )
    TenantStateDay.objects.filter(day=day).exclude(state__in=list(states)).delete()
    return len(rows)
