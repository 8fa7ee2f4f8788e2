"""The tenant's service state machine: the one place a tenant's state changes.

`TRANSITIONS` says which moves exist, who may cause each (a person in the
console, the vendor's support staff, or the system: health checks, tasks)
and which bump the key epoch (every process then drops the tenant's cached
data keys). `tenant_transition` makes a move under the tenant's row lock and
records one audit event naming the real actor: the key administrator who
revoked, the health check that saw the key disabled.

The key layer learns of every move through `on_transition` listeners that it
registers at startup (publishing the new state and epoch to every process),
so this module knows nothing of keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone

from audit.models import ActorKind, Outcome
from audit.services import Actor, record
from tenants.models import ServiceState, Tenant

S = ServiceState


class By(StrEnum):
    """Who may cause a transition."""

    PERSON = "person"  # a member of the tenant, in the console
    SUPPORT = "support"  # the vendor's support staff
    SYSTEM = "system"  # health checks, tasks, schedules


@dataclass(frozen=True)
class Transition:
    source: str
    target: str
    by: frozenset[By]
    # Revoking, restoring, finishing a key move or destroying changes which
    # data keys may be used: every process must drop what it cached.
    bump_epoch: bool = False


def _t(source: str, target: str, *by: By, bump_epoch: bool = False) -> Transition:
    return Transition(source, target, frozenset(by), bump_epoch)


PERSON, SUPPORT, SYSTEM = By.PERSON, By.SUPPORT, By.SYSTEM

TRANSITIONS: tuple[Transition, ...] = (
    # Enable: the data keys (and objects) move under the customer's key.
    _t(S.VENDOR_MANAGED, S.MIGRATING, PERSON),
    _t(S.MIGRATING, S.BYOK_ACTIVE, SYSTEM, bump_epoch=True),
    # The key store stops answering, and answers again.
    _t(S.BYOK_ACTIVE, S.DEGRADED, SYSTEM),
    _t(S.DEGRADED, S.BYOK_ACTIVE, SYSTEM),
    # A new key version: seen in the customer's store, or uploaded by a person.
    _t(S.BYOK_ACTIVE, S.ROTATION_PENDING, SYSTEM, PERSON),
    _t(S.DEGRADED, S.ROTATION_PENDING, SYSTEM, PERSON),
    # Confirmed (or forced, or a switch to another key): the data keys rewrap.
    _t(S.ROTATION_PENDING, S.REWRAPPING, PERSON),
    _t(S.BYOK_ACTIVE, S.REWRAPPING, PERSON),
    _t(S.REWRAPPING, S.BYOK_ACTIVE, SYSTEM),
    # Revoked by a key administrator, or the key was disabled or deleted.
    *(
        _t(source, S.REVOKED, PERSON, SYSTEM, bump_epoch=True)
        for source in (S.BYOK_ACTIVE, S.DEGRADED, S.ROTATION_PENDING, S.REWRAPPING)
    ),
    _t(S.REVOKED, S.BYOK_ACTIVE, PERSON, bump_epoch=True),
    # Remove BYOK: back to the vendor-managed key.
    _t(S.BYOK_ACTIVE, S.MIGRATING_BACK, PERSON),
    _t(S.DEGRADED, S.MIGRATING_BACK, PERSON),
    _t(S.MIGRATING_BACK, S.VENDOR_MANAGED, SYSTEM, bump_epoch=True),
    # Crypto-shredding, when an owner's scheduled waiting period ends.
    _t(S.REVOKED, S.DESTROYED, SYSTEM, bump_epoch=True),
)

_BY_PAIR: dict[tuple[str, str], Transition] = {(t.source, t.target): t for t in TRANSITIONS}

REVOCABLE_STATES: tuple[str, ...] = tuple(t.source for t in TRANSITIONS if t.target == S.REVOKED)


class TransitionNotAllowed(Exception):
    """A caller asked for a move its actor may never cause: a programming error."""


class ServicePaused(Exception):
    """The tenant's service is paused or moving: new data waits (the API answers 503)."""


def transition_for(source: str, target: str) -> Transition | None:
    return _BY_PAIR.get((source, target))


def cause_of(actor: Actor) -> By:
    if actor.kind == ActorKind.SUPPORT:
        return By.SUPPORT
    if actor.kind == ActorKind.SYSTEM:
        return By.SYSTEM
    return By.PERSON


Listener = Callable[[Tenant, Transition], None]
_listeners: list[Listener] = []


def on_transition(listener: Listener) -> None:
    """Call `listener(tenant, transition)` inside every move's transaction, after the write."""
    if listener not in _listeners:
        _listeners.append(listener)


def tenant_transition(
    *,
    tenant: Tenant,
    to: str,
    actor: Actor,
    action: str,
    reason: str = "",
    target: str = "",
    outcome: str = Outcome.SUCCESS,
    details: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    only_from: tuple[str, ...] | None = None,
) -> Tenant | None:
    """Move `tenant` to `to` if the table allows it from its current state; the moved row.

    1. The tenant's row is locked (in the caller's transaction when there is one).
    2. A current state with no move to `to` (or not in `only_from`, where the
       caller narrows the table) is not an error: another actor was faster.
       None is returned and nothing changes; the caller decides what to say.
    3. An actor the table does not name for this move raises
       TransitionNotAllowed: that is a bug, never a user's mistake.
    4. The state, the time it changed and (where the table says) the key epoch
       are written, one audit event is recorded under `action` with the real
       actor, and the listeners run, all in one transaction.
    """
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        move = transition_for(locked.state, to)
        if move is None or (only_from is not None and locked.state not in only_from):
            return None
        if cause_of(actor) not in move.by:
            raise TransitionNotAllowed(
                f"{cause_of(actor)} may not move a tenant from {move.source} to {move.target}"
            )
        updates: dict[str, Any] = {"state": to, "state_changed_at": timezone.now()}
        if move.bump_epoch:
            updates["key_epoch"] = F("key_epoch") + 1
        Tenant.objects.filter(pk=locked.pk).update(**updates)
        record(
            tenant=locked,
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            reason=reason,
            details={"from": move.source, "to": move.target, **(details or {})},
            request=request,
        )
        locked.refresh_from_db()
        for listener in _listeners:
            listener(locked, move)
    return locked
