"""Every metric family Keyward exports, defined once.

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, which console/settings.py sets
from KEYWARD_METRICS_DIR before anything imports prometheus-client) each
process writes its values to files there and `/metrics` adds them up, so
gunicorn and Celery workers report as one.

Labels take values from small, fixed sets only (provider kinds, operation
names, URL route names, task names, outcomes): never a path, a tenant or an id,
which would make a new series per value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

# Key stores answer in milliseconds (local) to seconds (a remote KMS timing out).
_KEY_STORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)

KEY_STORE_CALLS = Counter(
    "keyward_key_store_calls",
    "Calls to key stores, by provider kind, operation and outcome",
    ["provider", "operation", "outcome"],
)
KEY_STORE_DURATION = Histogram(
    "keyward_key_store_call_duration_seconds",
    "Time a key store took to answer, by provider kind and operation",
    ["provider", "operation"],
    buckets=_KEY_STORE_BUCKETS,
)

KEY_STORE_CIRCUIT_OPENED = Counter(
    "keyward_key_store_circuit_opened",
    "Times a key store endpoint failed often enough that this process stopped calling it "
    "for a back-off",
)
KEY_STORE_SHORT_CIRCUITED = Counter(
    "keyward_key_store_short_circuited",
    "Key store calls failed at once, without reaching the store, while its circuit was open",
    ["provider", "operation"],
)

DEK_CACHE_HITS = Counter("keyward_dek_cache_hits", "Data keys served from the process cache")
DEK_CACHE_MISSES = Counter("keyward_dek_cache_misses", "Data key lookups the cache did not hold")
DEK_CACHE_UNWRAPS = Counter(
    "keyward_dek_cache_unwraps", "Data keys unwrapped by their key store (misses and refreshes)"
)
DEK_CACHE_EVICTIONS = Counter(
    "keyward_dek_cache_evictions",
    "Data keys removed from the cache: 'size' (the bound), 'dropped' (revoke, epoch change)",
    ["reason"],
)
DEK_CACHE_ENTRIES = Gauge(
    "keyward_dek_cache_entries",
    "Unwrapped data keys held in memory, over live processes",
    multiprocess_mode="livesum",
)

HTTP_REQUESTS = Counter(
    "keyward_http_requests",
    "Requests answered, by URL route name, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "keyward_http_request_duration_seconds",
    "Time to answer a request, by URL route name and method",
    ["route", "method"],
)

TASKS = Counter(
    "keyward_celery_tasks",
    "Celery task runs, by task name and outcome (success, failure, retry)",
    ["task", "outcome"],
)
TASK_DURATION = Histogram(
    "keyward_celery_task_duration_seconds",
    "Celery task run time, by task name",
    ["task"],
    buckets=_TASK_BUCKETS,
)

AUDIT_APPENDS = Counter(
    "keyward_audit_events", "Audit events appended (committed), by outcome", ["outcome"]
)

HEALTH_ROUND_DURATION = Gauge(
    "keyward_health_round_duration_seconds",
    "How long the last round of key health checks took",
    multiprocess_mode="mostrecent",
)
HEALTH_ROUND_COMPLETED = Gauge(
    "keyward_health_round_completed_timestamp_seconds",
    "When the last round of key health checks finished (Unix time)",
    multiprocess_mode="max",
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str | None) -> str:
    """A request method as a label: anything unusual is 'other' (clients choose it)."""
    return method if method in _METHODS else "other"


@contextmanager
def timed(observe: Callable[[float], None]) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        observe(time.perf_counter() - started)
