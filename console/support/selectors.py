"""Reads of the support console.

The tenant list is one query per page, whatever the number of tenants: every
column is an annotation (a correlated subquery on an indexed column) and the
page is a keyset (`(sort value, id) > cursor`, LIMIT 51), never an OFFSET.
There are no maintained counters of records and objects: each is a COUNT on
the (tenant, ...) unique index of its table, and PostgreSQL evaluates such
"expensive" select-list subqueries only for the rows that survive the LIMIT,
so a page counts the data of its 50 tenants and no other.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import (
    BigIntegerField,
    CharField,
    DateTimeField,
    Exists,
    F,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Replace
from django.utils import timezone

from audit.models import AuditChain, AuditEvent
from keys.models import HealthResult, KekState, KekVersion, KeyHealthCheck, KeySource, SourceState
from objects.models import MigrationState, ObjectMigration, ObjectUsageCount
from records.models import DekRecordCount
from tenants.models import ServiceState, Tenant

PAGE_SIZE = 50
# A pending rotation older than this, or key material expiring within that, needs attention.
ROTATION_OVERDUE = timedelta(days=1)
EXPIRY_WARNING = timedelta(days=30)
FAILED_CHECKS = (HealthResult.DEGRADED, HealthResult.REVOKED, HealthResult.ERROR)


def _never() -> datetime:
    """Where an empty time sorts (never checked, no activity): before any real one."""
    return datetime(1970, 1, 1, tzinfo=UTC)


# Sort keys the list offers: the column each one orders by.
SORTS: dict[str, str] = {
    "name": "Name",
    "slug": "Slug",
    "state": "State",
    "since": "State since",
    "check": "Last check",
    "activity": "Last activity",
}


class BadCursor(ValueError):
    """A page link that does not decode: the message is the user's."""


def _chain_of(tenant_pk: Any) -> Any:
    """The audit chain head of a tenant (keyed by `str(uuid)`, with hyphens).

    PostgreSQL casts a uuid with its hyphens, so the key's index is used. SQLite
    (embedded mode) stores a uuid as 32 hex digits: there the key's hyphens are
    taken out instead, on a table of one row per tenant.
    """
    as_text = Cast(tenant_pk, CharField())
    if connection.vendor == "postgresql":
        return AuditChain.objects.filter(key=as_text)
    bare = Replace(F("key"), Value("-"), Value(""))
    return AuditChain.objects.annotate(bare=bare).filter(bare=as_text)


@dataclass(frozen=True)
class Listing:
    state: str = ""
    source: str = ""
    attention: bool = False
    q: str = ""
    sort: str = "name"
    descending: bool = False


@dataclass(frozen=True)
class TenantPage:
    rows: list[Tenant]
    next_cursor: str | None


def _sort_expression(sort: str) -> Any:
    if sort == "check":
        return Coalesce(F("check_at"), Value(_never()), output_field=DateTimeField())
    if sort == "activity":
        return Coalesce(F("last_activity"), Value(_never()), output_field=DateTimeField())
    if sort == "since":
        return F("state_changed_at")
    return F(sort)


def support_tenants(listing: Listing, now: datetime | None = None) -> QuerySet[Tenant]:
    """Every tenant with the columns of the support console, filtered and ordered."""
    now = now or timezone.now()
    active_source = KeySource.objects.filter(tenant=OuterRef("pk"), state=SourceState.ACTIVE)
    latest_check = KeyHealthCheck.objects.filter(tenant=OuterRef("pk")).order_by("-last_at")
    latest_move = ObjectMigration.objects.filter(tenant=OuterRef("pk")).order_by("-started")
    expiring = KekVersion.objects.filter(
        source__tenant=OuterRef("pk"),
        source__state=SourceState.ACTIVE,
        state__in=[KekState.ACTIVE, KekState.PENDING],
        material_expires_at__lte=now + EXPIRY_WARNING,
    )
    tenants = Tenant.objects.annotate(
        source_kind=Subquery(active_source.values("kind")[:1]),
        source_where=Subquery(
            active_source.annotate(
                where=Coalesce(
                    KT("config__key_arn"),
                    KT("config__vault_url"),
                    KT("config__host"),
                    Value(""),
                    output_field=CharField(),
                )
            ).values("where")[:1]
        ),
        check_result=Subquery(latest_check.values("result")[:1]),
        check_at=Subquery(latest_check.values("last_at")[:1]),
        move_state=Subquery(latest_move.values("state")[:1]),
        key_expiring=Exists(expiring),
        last_activity=Subquery(_chain_of(OuterRef("pk")).values("last_time")[:1]),
    )
    if listing.state:
        tenants = tenants.filter(state=listing.state)
    if listing.source:
        tenants = tenants.filter(
            Exists(
                KeySource.objects.filter(
                    tenant=OuterRef("pk"), state=SourceState.ACTIVE, kind=listing.source
                )
            )
        )
    if listing.q:
        tenants = tenants.filter(Q(name__icontains=listing.q) | Q(slug__icontains=listing.q))
    if listing.attention:
        tenants = tenants.filter(
            Q(state=ServiceState.DEGRADED)
            | Q(check_result__in=FAILED_CHECKS)
            | Q(move_state=MigrationState.FAILED)
            | Q(state=ServiceState.ROTATION_PENDING, state_changed_at__lt=now - ROTATION_OVERDUE)
            | Q(key_expiring=True)
        )
    return tenants.annotate(sort_value=_sort_expression(listing.sort))


def _with_counts(tenants: QuerySet[Tenant]) -> QuerySet[Tenant]:
    """Each tenant's records and objects, from the counters the database keeps
    (DekRecordCount, ObjectUsageCount): a few rows per data key, never a scan of
    the tenant's data, so a page of 50 tenants costs the same at a billion records."""

    def total_of(counters: QuerySet[Any], column: str) -> Coalesce:
        # SUM as a plain function, not Django's aggregate: the subquery is one
        # sum over the tenant's counter rows, with no GROUP BY to add.
        total = Func(F(column), function="SUM", output_field=BigIntegerField())
        per_tenant = counters.order_by().annotate(n=total).values("n")
        return Coalesce(Subquery(per_tenant[:1]), Value(0))

    return tenants.annotate(
        records_held=total_of(DekRecordCount.objects.filter(dek__tenant=OuterRef("pk")), "records"),
        objects_held=total_of(ObjectUsageCount.objects.filter(tenant=OuterRef("pk")), "count"),
    )


def encode_cursor(value: Any, pk: Any) -> str:
    raw = value.isoformat() if isinstance(value, datetime) else str(value)
    data = json.dumps([raw, str(pk)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[Any, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
        value: Any = datetime.fromisoformat(raw) if sort in ("since", "check", "activity") else raw
        if not isinstance(value, (str, datetime)):
            raise TypeError
        return value, uuid.UUID(pk)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("That page link is not valid; start again from the first page.") from None


def support_tenant_page(listing: Listing, after: str | None = None) -> TenantPage:
    """One page of 50 after `after` (a cursor from the previous page), in one query."""
    tenants = support_tenants(listing)
    if after:
        value, pk = _decode_cursor(after, listing.sort)
        if listing.descending:
            tenants = tenants.filter(Q(sort_value__lt=value) | Q(sort_value=value, pk__lt=pk))
        else:
            tenants = tenants.filter(Q(sort_value__gt=value) | Q(sort_value=value, pk__gt=pk))
    order = ("-sort_value", "-pk") if listing.descending else ("sort_value", "pk")
    rows = list(_with_counts(tenants.order_by(*order))[: PAGE_SIZE + 1])
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    last = rows[-1] if rows else None
    next_cursor = encode_cursor(last.sort_value, last.pk) if more and last is not None else None  # type: ignore[attr-defined]
    return TenantPage(rows=rows, next_cursor=next_cursor)


# One tenant's support page: metadata only.

# Audit actions a troubleshooter needs: the key's life, the health check, moves, support.
KEY_EVENT_PREFIXES = (
    "key.",
    "key_source.",
    "key_import.",
    "byok.",
    "kek.",
    "dek.",
    "objects.migration",
    "addon.",
    "tenant.",
)


def support_key_sources(tenant: Tenant) -> list[KeySource]:
    return list(
        KeySource.objects.filter(tenant=tenant)
        .prefetch_related("versions")
        .defer("sealed_credentials")
        .order_by("-created")
    )


def support_health_history(tenant: Tenant, limit: int = 30) -> list[KeyHealthCheck]:
    return list(KeyHealthCheck.objects.filter(tenant=tenant).order_by("-last_at")[:limit])


def support_moves(tenant: Tenant, limit: int = 20) -> list[ObjectMigration]:
    return list(ObjectMigration.objects.filter(tenant=tenant).order_by("-started")[:limit])


def support_key_events(tenant: Tenant, limit: int = 50) -> list[AuditEvent]:
    """The tenant's key events, newest first (the trail's chain index serves it)."""
    prefixes = Q()
    for prefix in KEY_EVENT_PREFIXES:
        prefixes |= Q(action__startswith=prefix)
    return list(
        AuditEvent.objects.filter(chain=str(tenant.pk))
        .filter(prefixes)
        .only("time", "seq", "actor_kind", "actor_display", "action", "outcome", "reason", "target")
        .order_by("-seq")[:limit]
    )


def support_tenant(slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()
