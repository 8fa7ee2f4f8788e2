from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import Model, Q, QuerySet, Subquery
from django.utils import timezone

from audit.models import AuditChain, AuditEvent
from audit.services import chain_key


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""
    outcome: str = ""
    date_from: date | None = None
    date_to: date | None = None


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def audit_events_for_tenant(tenant: Model, filters: AuditFilters) -> QuerySet[AuditEvent]:
    """The tenant's events, newest first; only its own chain is ever read."""
    events = AuditEvent.objects.filter(chain=chain_key(tenant))
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.actor:
        # A person acting in a tenant is shown with their role ("ann@acme.test
        # (Key administrator)"); their email finds them with or without it.
        events = events.filter(
            Q(actor_display=filters.actor) | Q(actor_display__startswith=f"{filters.actor} (")
        )
    if filters.outcome:
        events = events.filter(outcome=filters.outcome)
    # Times never decrease along a chain (`record` holds the head's last time;
    # events of one time are told apart by seq), so a date range is a range of
    # sequence numbers: two one-row index lookups,
    # subqueries of the page's own statement, turn it into one, and the page
    # walks only the days asked for. A bound no event reaches gives NULL, and so
    # no rows. The times are not compared again: the bounds imply them, and with
    # them the planner, not knowing the bounds, reads the whole range by time
    # and sorts it.
    chain = AuditEvent.objects.filter(chain=chain_key(tenant))
    if filters.date_from:
        start = _start_of(filters.date_from)
        first = chain.filter(time__gte=start).order_by("time", "seq").values("seq")[:1]
        events = events.filter(seq__gte=Subquery(first))
    if filters.date_to:
        end = _start_of(filters.date_to + timedelta(days=1))
        last = chain.filter(time__lt=end).order_by("-time", "-seq").values("seq")[:1]
        events = events.filter(seq__lte=Subquery(last))
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


def audit_events_after(tenant: Model, *, after: int, limit: int) -> list[AuditEvent]:
    """Up to `limit` of the tenant's events with seq above `after`, in chain order.

    Resuming from the last seq read never skips an event: appends to a chain
    are serialised on its head row, so seq N is committed before seq N + 1 is
    written, and the chain is gapless and append-only.
    """
    events = AuditEvent.objects.filter(chain=chain_key(tenant), seq__gt=after)
    return list(events.order_by("seq")[:limit])


def recent_audit_events(tenant: Model, limit: int = 10) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain_key(tenant)).order_by("-seq")[:limit])


def chain_length(tenant: Model) -> QuerySet[AuditChain, Any]:
    """The tenant's chain head as a one-column query (`last_seq`), to run alone or
    inside another query."""
    return AuditChain.objects.filter(key=chain_key(tenant)).values("last_seq")


def chain_position(tenant: Model) -> int:
    """How many events the tenant's chain holds: it grows with every recorded action."""
    seq = chain_length(tenant).values_list("last_seq", flat=True)
    return int(seq.first() or 0)
