"""The one way to write an audit event."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import Model
from django.http import HttpRequest
from django.utils import timezone

from audit.chain import GENESIS_HASH, BrokenLink, event_hash
from audit.models import VENDOR_CHAIN, ActorKind, AuditChain, AuditEvent, Outcome
from telemetry.context import current_request_id
from telemetry.metrics import AUDIT_APPENDS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    kind: str
    id: str = ""
    display: str = ""

    @classmethod
    def system(cls, what: str = "keyward") -> Actor:
        return cls(ActorKind.SYSTEM, "", what)

    @classmethod
    def anonymous(cls, display: str = "") -> Actor:
        return cls(ActorKind.ANONYMOUS, "", display[:254])

    @classmethod
    def for_user(
        cls, user: AbstractBaseUser | AnonymousUser, *, support: bool = False, role: str = ""
    ) -> Actor:
        """A signed-in person. `role` names their role in the tenant they act in: the
        trail shows it with them ("ann@acme.test (Key administrator)"), as it was then."""
        if not user.is_authenticated:
            return cls.anonymous()
        kind = ActorKind.SUPPORT if support else ActorKind.USER
        display = f"{user.get_username()} ({role})" if role else user.get_username()
        return cls(kind, str(user.pk), display[:254])


def chain_key(tenant: Model | None) -> str:
    return VENDOR_CHAIN if tenant is None else str(tenant.pk)


def _request_context(request: HttpRequest | None) -> dict[str, Any]:
    """Where the event came from. The request id also reaches services that are
    not handed the request (the middleware sets it for the whole request)."""
    if request is None:
        return {"ip": None, "user_agent": "", "request_id": current_request_id()}
    return {
        "ip": request.META.get("REMOTE_ADDR") or None,
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:512],
        "request_id": getattr(request, "request_id", "") or current_request_id(),
    }


def record(
    *,
    tenant: Model | None,
    actor: Actor,
    action: str,
    outcome: str = Outcome.SUCCESS,
    target: str = "",
    reason: str = "",
    details: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> AuditEvent:
    """Append one event to the tenant's chain (or the vendor's when tenant is None).

    1. Make sure the chain's head row exists (insert-or-ignore, so two first
       writers cannot both create it).
    2. Lock the head row: concurrent writers queue here, which is what keeps
       the sequence gapless and the chain unforked.
    3. Hash the event over the head's hash, insert it and move the head.
    The lock is held until the surrounding transaction commits, so an event
    that rolls back with its transaction leaves no gap either.
    """
    key = chain_key(tenant)
    with transaction.atomic():
        AuditChain.objects.bulk_create([AuditChain(key=key)], ignore_conflicts=True)
        head = AuditChain.objects.select_for_update().get(key=key)
        now = timezone.now()
        if head.last_time is not None and now < head.last_time:
            now = head.last_time
        values: dict[str, Any] = {
            "chain": key,
            "seq": head.last_seq + 1,
            "tenant_id": tenant.pk if tenant is not None else None,
            "time": now,
            "actor_kind": actor.kind,
            "actor_id": actor.id,
            "actor_display": actor.display,
            "action": action,
            "target": target[:254],
            "outcome": outcome,
            "reason": reason,
            "details": details or {},
            **_request_context(request),
        }
        digest = event_hash(values, head.last_hash)
        event = AuditEvent.objects.create(prev_hash=head.last_hash, hash=digest, **values)
        head.last_seq = values["seq"]
        head.last_hash = digest
        head.last_time = now
        head.save(update_fields=["last_seq", "last_hash", "last_time"])
        # Counted once it is kept: an event that rolls back was never appended.
        counter = AUDIT_APPENDS.labels(outcome)
        transaction.on_commit(counter.inc)
    return event


def record_for_tenants(tenants: Iterable[Model | None], **kwargs: Any) -> None:
    for tenant in tenants:
        record(tenant=tenant, **kwargs)


def _values(event: AuditEvent) -> dict[str, Any]:
    return {
        "chain": event.chain,
        "seq": event.seq,
        "tenant_id": event.tenant_id,
        "time": event.time,
        "actor_kind": event.actor_kind,
        "actor_id": event.actor_id,
        "actor_display": event.actor_display,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "reason": event.reason,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "details": event.details,
    }


def audit_verify_chain(key: str) -> BrokenLink | None:
    """Walk one chain from its first event; return the first broken link, if any."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    prev_time = None
    events = AuditEvent.objects.filter(chain=key).order_by("seq")
    for event in events.iterator(chunk_size=5000):
        if event.seq != expected_seq:
            return BrokenLink(key, expected_seq, f"missing (next stored event is #{event.seq})")
        if prev_time is not None and event.time < prev_time:
            return BrokenLink(key, event.seq, "time is earlier than the event before it")
        if event.prev_hash != prev_hash:
            return BrokenLink(key, event.seq, "previous-hash does not match the event before it")
        if event_hash(_values(event), prev_hash) != event.hash:
            return BrokenLink(key, event.seq, "content does not match its hash (altered)")
        prev_hash = event.hash
        prev_time = event.time
        expected_seq += 1
    head = AuditChain.objects.filter(key=key).first()
    last_seq = expected_seq - 1
    if head is not None and (head.last_seq != last_seq or head.last_hash != prev_hash):
        return BrokenLink(
            key, last_seq + 1, f"missing (the chain head records #{head.last_seq} as the last)"
        )
    return None
