"""What keys know of the data they protect: consumers that the data apps register.

Keys sit below the data in the layering (records and objects import keys,
never the reverse), yet DEK retirement, the Keys page, the moves on Enable and
removal, re-encryption and crypto-shredding all depend on the data. Each data
app describes itself once, in its `AppConfig.ready()`, with a `DataConsumer`;
keys ask the registry and never import a data app.

Every hook but `name`, `counts_by_dek` and `depends_on` is optional: a
consumer says only what it does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet

from keys.models import DataKey, KekVersion, KeySource
from keys.providers.base import KeyProvider
from tenants.models import Tenant

if TYPE_CHECKING:
    from audit.services import Actor

# The directions of a data move: with Enable, to the tenant's dedicated
# storage; with the removal of BYOK, back to shared storage.
TO_DEDICATED = "to_dedicated"
TO_SHARED = "to_shared"

# Rewrap the consumer's own wrapped keys (not DEKs) of `tenant` under `target`,
# one key per transaction with no lock held across key-store calls; with
# `version`, those not under that version of it. False when the tenant left
# `while_state` (the caller stops).
WrappedKeyMover = Callable[[Tenant, KeySource, KeyProvider, str, str | None], bool]


class DataUnavailable(Exception):
    """A consumer's store cannot be reached now; the work can be retried later."""


@dataclass(frozen=True)
class ReencryptionResult:
    """What one consumer's re-encryption pass did, for the audit event."""

    rewritten: int
    # Items that could not be rewritten (named in the audit event; their DEK stays).
    left: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataMove:
    """Data that changes location with the key source (Enable and removal).

    `begin(tenant, source, direction, new_dek)` runs in the switch's
    transaction (tenant row locked) and returns True when a move started;
    `new_dek()` makes the DEK under the new source that the data moves under.
    `next(tenant, direction)` after the switch: "done", "moving" or "failed".
    `retry(tenant, actor)` starts a failed move again and says what happens.
    """

    begin: Callable[[Tenant, KeySource, str, Callable[[], DataKey]], bool]
    next: Callable[[Tenant, str], str]
    retry: Callable[[Tenant, Actor], str]
    # The latest finished move in a sentence ("60 objects moved, 60 verified,
    # 215.7 KB"), None when there was none: a finished move stays visible.
    summary: Callable[[Tenant], str | None] | None = None


@dataclass(frozen=True)
class WrappedKey:
    """One of a consumer's own wrapped keys (not a DEK), as stored."""

    id: int
    tenant_id: str
    kek_version: KekVersion  # its source loaded
    blob: bytes
    context: dict[str, str]


@dataclass(frozen=True)
class OwnWrappedKeys:
    """A consumer's own wrapped keys, for work that rewrites blobs in place under
    the same KEK version (format upgrades, a new vendor root key version).

    `of(tenant)` lists every key it keeps wrapped (empty blobs are destroyed
    keys and left out); `replace(id, before, after)` stores `after` if the key
    still holds `before`, in the caller's transaction, and says whether it did.
    """

    of: Callable[[Tenant], Sequence[WrappedKey]]
    replace: Callable[[int, bytes, bytes], bool]


@dataclass(frozen=True)
class DataConsumer:
    name: str
    # How much of the tenant's data each DEK protects: {dek id: items}.
    counts_by_dek: Callable[[Tenant], dict[int, int]]
    # Data, or work under way, still needs this DEK: it may not retire.
    depends_on: Callable[[DataKey], bool]
    # Rewrite what is under older DEKs under `target` (DEK rotation).
    reencrypt: Callable[[Tenant, DataKey], ReencryptionResult] | None = None
    move_wrapped_keys: WrappedKeyMover | None = None
    wrapped_keys: OwnWrappedKeys | None = None
    data_move: DataMove | None = None
    # Destroy what a crypto-shred must take with the keys (in the caller's
    # transaction); how many items.
    shred: Callable[[Tenant], int] | None = None
    # The consumer's long jobs over a tenant's data, newest first (the Keys page).
    jobs: Callable[[Tenant], Sequence[Any]] | None = None
    # Those of its jobs that are queued or running, as a query (the live poller's pace).
    open_jobs: Callable[[Tenant], QuerySet[Any]] | None = None


_consumers: dict[str, DataConsumer] = {}


def consumer_register(consumer: DataConsumer) -> None:
    if consumer.jobs is not None and consumer.open_jobs is None:
        # The live poller would never speed up for its jobs (console/live.py).
        raise ValueError(f"consumer {consumer.name!r} lists jobs but not which are open")
    _consumers[consumer.name] = consumer


def consumers() -> list[DataConsumer]:
    return list(_consumers.values())


def consumer(name: str) -> DataConsumer | None:
    return _consumers.get(name)


# -- what keys ask -------------------------------------------------------------------------


def counts_by_dek(tenant: Tenant) -> dict[str, dict[int, int]]:
    """{consumer name: {dek id: items}} for the tenant."""
    return {c.name: c.counts_by_dek(tenant) for c in consumers()}


def data_depends_on(dek: DataKey) -> bool:
    return any(c.depends_on(dek) for c in consumers())


def reencrypt_pass(tenant: Tenant, target: DataKey, *, skip: str) -> dict[str, ReencryptionResult]:
    """Every consumer's re-encryption but `skip`'s (the one running the job)."""
    return {
        c.name: c.reencrypt(tenant, target)
        for c in consumers()
        if c.reencrypt is not None and c.name != skip
    }


def shred_other_keys(tenant: Tenant) -> int:
    """Destroy what the consumers keep under the tenant's keys; how many items."""
    return sum(c.shred(tenant) for c in consumers() if c.shred is not None)


def rewrap_other_keys(
    *,
    tenant: Tenant,
    target: KeySource,
    wrapper: KeyProvider,
    while_state: str,
    version: str | None = None,
) -> bool:
    """Move every consumer's wrapped keys under `target`; False to stop."""
    return all(
        c.move_wrapped_keys(tenant, target, wrapper, while_state, version)
        for c in consumers()
        if c.move_wrapped_keys is not None
    )


def own_wrapped_keys(tenant: Tenant) -> list[tuple[OwnWrappedKeys, WrappedKey]]:
    """Every consumer's wrapped keys of `tenant`, each with its consumer's hooks."""
    return [
        (c.wrapped_keys, key)
        for c in consumers()
        if c.wrapped_keys is not None
        for key in c.wrapped_keys.of(tenant)
    ]


def data_move_begin(
    *, tenant: Tenant, source: KeySource, direction: str, new_dek: Callable[[], DataKey]
) -> bool:
    """Start every consumer's data move; True when at least one started."""
    started = [
        c.data_move.begin(tenant, source, direction, new_dek)
        for c in consumers()
        if c.data_move is not None
    ]
    return any(started)


def data_move_next(tenant: Tenant, direction: str) -> str:
    """ "done" when every consumer's data arrived, else "failed" or "moving"."""
    answers = [c.data_move.next(tenant, direction) for c in consumers() if c.data_move is not None]
    for answer in ("failed", "moving"):
        if answer in answers:
            return answer
    return "done"


def data_move_retry(*, tenant: Tenant, actor: Actor) -> str:
    for c in consumers():
        if c.data_move is not None:
            return c.data_move.retry(tenant, actor)
    return "Nothing to move."


def data_move_summaries(tenant: Tenant) -> list[str]:
    """Every consumer's sentence on its latest finished move."""
    found = (
        c.data_move.summary(tenant)
        for c in consumers()
        if c.data_move is not None and c.data_move.summary is not None
    )
    return [text for text in found if text]


def open_data_jobs(tenant: Tenant) -> list[QuerySet[Any]]:
    """Every consumer's query for its open jobs over the tenant's data."""
    return [c.open_jobs(tenant) for c in consumers() if c.open_jobs is not None]


def data_jobs(tenant: Tenant) -> list[Any]:
    """Every consumer's jobs over the tenant's data, newest first per consumer."""
    return [job for c in consumers() if c.jobs is not None for job in c.jobs(tenant)]
