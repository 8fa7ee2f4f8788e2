from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import chain_key
from tenants.models import Tenant


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""
    outcome: str = ""
    date_from: date | None = None
    date_to: date | None = None


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def audit_events_for_tenant(tenant: Tenant, filters: AuditFilters) -> QuerySet[AuditEvent]:
    """The tenant's events, newest first; only its own chain is ever read."""
    events = AuditEvent.objects.filter(chain=chain_key(tenant))
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.actor:
        events = events.filter(actor_display=filters.actor)
    if filters.outcome:
        events = events.filter(outcome=filters.outcome)
    if filters.date_from:
        events = events.filter(time__gte=_start_of(filters.date_from))
    if filters.date_to:
        events = events.filter(time__lt=_start_of(filters.date_to + timedelta(days=1)))
    return events.order_by("-seq")


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_before: int | None


def audit_page(events: QuerySet[AuditEvent], *, before: int | None, size: int) -> AuditPage:
    """One page by keyset: events with seq below the cursor, newest first.

    Fetches one row more than the page to know whether another page follows,
    so no COUNT over the whole chain is ever run.
    """
    if before is not None:
        events = events.filter(seq__lt=before)
    rows = list(events[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return AuditPage(rows, rows[-1].seq if more and rows else None)


def recent_audit_events(tenant: Tenant, limit: int = 10) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain_key(tenant)).order_by("-seq")[:limit])
