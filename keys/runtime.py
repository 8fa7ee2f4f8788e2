"""The process-wide envelope: wires the framework-free core to Django and Redis.

- DEKs are unwrapped by the tenant's key source (`_load_dek`).
- Tenant key state (epoch, current DEK, status) is read from Redis when it is
  configured (one HGETALL per tenant per interval; missing entries are filled
  from the database), else from the database (the embedded default).
- Encryption counts are reserved in blocks from the database and flushed every
  KEYWARD_COUNT_FLUSH_SECONDS, at exit and when a Celery worker process stops.
  Worst case, a process killed with SIGKILL loses the counts of its last flush
  interval from the displayed figure; the rotation limit is enforced on the
  reservations, which are written before any encryption happens, so a crash
  can never let a DEK exceed its limit. A reservation is written in the
  caller's transaction: when that rolls back, the process keeps the block it
  was granted, and each flush raises the reserved figure back to at least the
  encryptions counted. Until that flush the limit may be passed by at most the
  blocks of rolled-back reservations (the default limit, 2^31, is half the
  2^32 bound of random nonces, which leaves ample room).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from crypto.ciphertext import UnknownDataKey
from crypto.dekcache import DekCache, LoadedKey
from crypto.envelope import ACTIVE, Envelope, TenantKeyState
from keys import usage
from keys.circuit import reset_circuits
from keys.models import DataKey, DekState
from keys.registry import provider_for
from telemetry.metrics import (
    DEK_CACHE_ENTRIES,
    DEK_CACHE_EVICTIONS,
    DEK_CACHE_HITS,
    DEK_CACHE_MISSES,
    DEK_CACHE_UNWRAPS,
)
from tenants.models import ServiceState, Tenant
from tenants.states import Transition

# The Celery task name (tasks.py registers it under this): enqueued by name, so
# the write path need not import the tasks, which import the services.
ROTATE_DEK_FOR_COUNT_TASK = "keys.rotate_dek_for_count"

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_envelope: Envelope | None = None
_pid = 0


def dek_context(tenant_id: str, version: int) -> dict[str, str]:
    """What a wrapped DEK is bound to, at every provider."""
    return {"keyward:tenant": tenant_id, "keyward:purpose": "dek", "keyward:dek": str(version)}


def _status(state: str) -> str:
    if state == ServiceState.REVOKED:
        return "revoked"
    if state == ServiceState.DESTROYED:
        return "destroyed"
    return ACTIVE


def state_from_db(tenant_id: str) -> TenantKeyState:
    row = Tenant.objects.filter(pk=tenant_id).values("key_epoch", "state").first()
    if row is None:
        return TenantKeyState(epoch=0, current_dek_id=None, status="unknown tenant")
    current = (
        DataKey.objects.filter(tenant_id=tenant_id, state=DekState.ACTIVE)
        .values_list("id", flat=True)
        .first()
    )
    return TenantKeyState(int(row["key_epoch"]), current, _status(row["state"]))


class DbStateSource:
    def fetch(self, tenant_id: str) -> TenantKeyState:
        return state_from_db(tenant_id)


def _order(state: TenantKeyState) -> tuple[int, int]:
    return state.epoch, state.current_dek_id or 0


class RedisStateSource:
    """Tenant key state from Redis, which holds a copy of the database's.

    A Redis that restarts may come back with less than it held: empty (no
    persistence; harmless, a missing entry is read from the database) or with
    its last snapshot, older than a revoke published since, or missing a
    revoke published while it was down (that publish failed). Trusting such an
    entry would forget the revoke: the process would see the old epoch and
    status and decrypt again. So the copy is trusted only once this process
    has checked it against the database on the current connection: every
    connection made to Redis (a restart makes every client connect again)
    starts a new generation, and a tenant's first read in a generation is
    taken from the database and published forward (the write never moves
    Redis backwards). A publish that failed is retried by the flusher thread,
    for a Redis that was cut off from this process without restarting.
    """

    PREFIX = "keyward:tks:"

    def __init__(self, url: str) -> None:
        self._generation = 0  # connections made to Redis so far
        self._checked: dict[str, int] = {}  # tenant -> generation it was checked in
        self._unpublished: set[str] = set()
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=2,
            socket_connect_timeout=2,
            redis_connect_func=self._connected,
        )

    def _connected(self, connection: Any) -> None:
        connection.on_connect()  # what redis-py does when no function is given
        self._generation += 1

    def fetch(self, tenant_id: str) -> TenantKeyState:
        try:
            raw: Any = self.client.hgetall(self.PREFIX + tenant_id)
        except redis.RedisError:
            logger.warning("Redis unreachable for key state; reading the database")
            return state_from_db(tenant_id)
        if not raw:
            return self.publish(tenant_id)
        dek = raw.get(b"dek", b"")
        held = TenantKeyState(
            epoch=int(raw[b"epoch"]),
            current_dek_id=int(dek) if dek else None,
            status=raw[b"status"].decode(),
        )
        if self._checked.get(tenant_id) == self._generation:
            return held
        state = self.publish(tenant_id)
        # Redis ahead of the database read: a change committed since, published by
        # its process. Never go back from it (the rule of _WRITE).
        return held if _order(held) > _order(state) else state

    def publish(self, tenant_id: str) -> TenantKeyState:
        """Copy the tenant's committed key state from the database to Redis."""
        generation = self._generation
        state = state_from_db(tenant_id)
        if self.write(tenant_id, state) or self._holds_newer(tenant_id):
            # A reconnect during the write bumped the generation: then the
            # next read checks again, which costs one query and is safe.
            self._checked[tenant_id] = generation
        return state

    def _holds_newer(self, tenant_id: str) -> bool:
        """The write was refused as older than what Redis holds (not failed)."""
        return tenant_id not in self._unpublished

    def publish_pending(self) -> None:
        """Publish again what could not be published while Redis was unreachable."""
        for tenant_id in list(self._unpublished):
            self.publish(tenant_id)

    # Never moves the state backwards: a reader that loaded the database just
    # before a revoke must not overwrite the revoke's newer epoch (or a rotation's
    # newer DEK; DEK ids only grow). Self-healing: entries expire within the hour.
    _WRITE = """
    local cur = redis.call('HMGET', KEYS[1], 'epoch', 'dek')
    if cur[1] then
      local ce, cd = tonumber(cur[1]), tonumber(cur[2]) or 0
      local ne, nd = tonumber(ARGV[1]), tonumber(ARGV[2]) or 0
      if ne < ce or (ne == ce and nd < cd) then return 0 end
    end
    redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'dek', ARGV[2], 'status', ARGV[3])
    redis.call('EXPIRE', KEYS[1], 3600)
    return 1
    """

    def write(self, tenant_id: str, state: TenantKeyState) -> bool:
        """Store `state` unless Redis already holds a newer one; True if written."""
        try:
            written = self.client.eval(
                self._WRITE,
                1,
                self.PREFIX + tenant_id,
                state.epoch,
                state.current_dek_id or "",
                state.status,
            )
        except redis.RedisError:
            logger.warning("Redis unreachable; key state not published")
            self._unpublished.add(tenant_id)
            return False
        self._unpublished.discard(tenant_id)
        return bool(written)


def _states() -> DbStateSource | RedisStateSource:
    return RedisStateSource(settings.REDIS_URL) if settings.REDIS_URL else DbStateSource()


def publish_key_state(tenant_id: str) -> None:
    """Tell every process about a changed epoch, current DEK or status, after commit.

    With the database as the state source, committing is publishing.
    """
    source = envelope_state_source()
    if isinstance(source, RedisStateSource):
        transaction.on_commit(lambda: source.publish(tenant_id))


def on_tenant_transition(tenant: Tenant, move: Transition) -> None:
    """Every state change reaches every process; an epoch bump empties this one's cache."""
    tenant_id = str(tenant.pk)
    publish_key_state(tenant_id)
    if move.bump_epoch:
        transaction.on_commit(lambda: envelope().forget(tenant_id))


def _load_dek(tenant_id: str, dek_id: int) -> LoadedKey:
    try:
        row = (
            DataKey.objects.select_related("kek_version__source", "tenant")
            .filter(pk=dek_id, tenant_id=tenant_id)
            .exclude(state__in=[DekState.RETIRED, DekState.DESTROYED])
            .first()
        )
        if row is None:
            raise UnknownDataKey(f"ciphertext names data key {dek_id}, unknown for this tenant")
        provider = provider_for(row.kek_version.source)
        material = provider.unwrap(
            bytes(row.wrapped),
            dek_context(tenant_id, row.version),
            row.kek_version.provider_version,
        )
        return LoadedKey(material, float(row.tenant.dek_cache_ttl))
    finally:
        if threading.current_thread().name.startswith("dek-refresh"):
            connection.close()


def _reserve(tenant_id: str, dek_id: int, wanted: int) -> int:
    limit = settings.KEYWARD_DEK_MAX_ENCRYPTIONS
    with transaction.atomic():
        updated = DataKey.objects.filter(
            pk=dek_id,
            tenant_id=tenant_id,
            state=DekState.ACTIVE,
            encryptions_reserved__lte=limit - wanted,
        ).update(encryptions_reserved=F("encryptions_reserved") + wanted)
        if not updated:
            return 0
        reserved = DataKey.objects.values_list("encryptions_reserved", flat=True).get(pk=dek_id)
    if reserved >= limit * settings.KEYWARD_DEK_ROTATE_AT_FRACTION:
        _request_rotation(tenant_id)
    return wanted


def _request_rotation(tenant_id: str) -> None:
    transaction.on_commit(
        lambda: current_app.send_task(ROTATE_DEK_FOR_COUNT_TASK, args=[tenant_id])
    )


def _exhausted(tenant_id: str, dek_id: int) -> None:
    _request_rotation(tenant_id)


def flush_counts() -> None:
    """Write the encryptions this process did since the last flush, in one statement."""
    env = _envelope
    if env is None or _pid != os.getpid():
        return
    counts = env.take_counts()
    if not counts:
        return
    try:
        with connection.cursor() as cursor:
            # A reservation is made in the caller's transaction and undone when
            # that rolls back, though the encryptions it covered were done: never
            # let the reserved figure (what the limit is checked against) fall
            # below the encryptions counted. (SET reads the row's old values.)
            cursor.executemany(
                "UPDATE keys_datakey SET encryption_count = encryption_count + %s, "
                "encryptions_reserved = CASE WHEN encryptions_reserved < encryption_count + %s "
                "THEN encryption_count + %s ELSE encryptions_reserved END WHERE id = %s",
                [(n, n, n, dek_id) for dek_id, n in counts.items()],
            )
    except Exception as exc:
        logger.warning(
            "could not flush encryption counts (%s); they stay reserved", type(exc).__name__
        )


def publish_cache_metrics() -> None:
    """Add what this process's DEK cache did since the last call to the metrics.

    The cache counts in plain integers (crypto/dekcache.py); this runs with the
    count flush and before this process answers a scrape.
    """
    env = _envelope
    if env is None or _pid != os.getpid():
        return
    stats = env.cache.take_stats()
    DEK_CACHE_HITS.inc(stats.hits)
    DEK_CACHE_MISSES.inc(stats.misses)
    DEK_CACHE_UNWRAPS.inc(stats.unwraps)
    DEK_CACHE_EVICTIONS.labels("size").inc(stats.evicted)
    DEK_CACHE_EVICTIONS.labels("dropped").inc(stats.dropped)
    DEK_CACHE_ENTRIES.set(len(env.cache))


def _flush_at_exit() -> None:
    # At interpreter exit the database (or the log stream) may be gone already;
    # the reservations made before encrypting still hold, so stay quiet.
    logging.disable(logging.CRITICAL)
    with contextlib.suppress(Exception):
        flush_counts()


def _flusher() -> None:
    interval = settings.KEYWARD_COUNT_FLUSH_SECONDS
    stop = threading.Event()
    while not stop.wait(interval):
        flush_counts()
        publish_cache_metrics()
        source = _state_source
        if isinstance(source, RedisStateSource) and _pid == os.getpid():
            source.publish_pending()
        connection.close()


_state_source: DbStateSource | RedisStateSource | None = None
_atexit_registered = threading.Event()


def envelope_state_source() -> DbStateSource | RedisStateSource:
    envelope()
    assert _state_source is not None
    return _state_source


def envelope() -> Envelope:
    """This process's envelope (rebuilt after fork, so no state crosses processes)."""
    global _envelope, _pid, _state_source
    env = _envelope
    if env is not None and _pid == os.getpid():
        return env
    with _lock:
        if _envelope is None or _pid != os.getpid():
            _state_source = _states()
            _envelope = Envelope(
                cache=DekCache(_load_dek, max_entries=settings.KEYWARD_DEK_CACHE_MAX_ENTRIES),
                states=_state_source,
                reserve=_reserve,
                on_exhausted=_exhausted,
                state_interval=settings.KEYWARD_KEY_STATE_INTERVAL,
                block=settings.KEYWARD_DEK_RESERVATION_BLOCK,
            )
            _pid = os.getpid()
            usage.report_before_flush(_report_cache_use)
            threading.Thread(target=_flusher, name="dek-count-flush", daemon=True).start()
            if not _atexit_registered.is_set():
                atexit.register(_flush_at_exit)
                _atexit_registered.set()
        return _envelope


def _report_cache_use() -> None:
    env = _envelope
    if env is not None and _pid == os.getpid():
        usage.note_cache(env.cache.take_uses())


def reset_for_tests() -> None:
    """Forget this process's envelope, its unflushed counts and its key stores'
    circuits (as a restart would)."""
    global _envelope, _pid
    reset_circuits()
    with _lock:
        _envelope = None
        _pid = 0
