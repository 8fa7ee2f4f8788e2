"""Reads for the Keys pages: the overview, move progress, rotation history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import chain_key
from keys.consumers import counts_by_dek, data_jobs, data_move_summaries
from keys.models import DataKey, DekState, KekVersion, KeySource, SourceKind, SourceState
from keys.providers.base import KeyDescription
from keys.registry import provider_for
from keys.selectors.sources import LIVE_DEK_STATES
from tenants.models import ServiceState, Tenant


@dataclass(frozen=True)
class DekRow:
    dek: DataKey
    # Items under this DEK, per data consumer ("records", "objects").
    counts: dict[str, int]
    age: timedelta

    @property
    def records(self) -> int:
        return self.counts.get("records", 0)

    @property
    def objects(self) -> int:
        return self.counts.get("objects", 0)


# Retired and destroyed DEKs shown beside the live ones and those holding data:
# the newest few. A tenant rotating weekly has hundreds after a few years, all
# empty; the page says how many it leaves out.
SHOWN_RETIRED_DEKS = 10


@dataclass(frozen=True)
class KeysOverview:
    source: KeySource | None
    description: KeyDescription | None
    kek_versions: list[KekVersion]
    deks: list[DekRow]
    next_rotation: datetime | None
    ttl_seconds: int
    # The data consumers' jobs (re-encryption), the open one and the latest.
    open_job: Any
    last_job: Any
    records_on_older_deks: int
    objects_on_older_deks: int = 0
    # Retired or destroyed DEKs, holding no data, that `deks` leaves out.
    deks_not_shown: int = 0


def keys_overview(tenant: Tenant) -> KeysOverview:
    source = KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE).first()
    description = provider_for(source).describe() if source is not None else None
    counts = counts_by_dek(tenant)
    now = timezone.now()
    holding = {pk for per_dek in counts.values() for pk in per_dek}
    live = Q(state__in=[DekState.ACTIVE, DekState.RETIRING]) | Q(pk__in=holding)
    of_tenant = DataKey.objects.filter(tenant=tenant)
    others = of_tenant.exclude(live)
    shown_others = list(
        others.order_by("-version").values_list("pk", flat=True)[:SHOWN_RETIRED_DEKS]
    )
    deks = [
        DekRow(
            dek,
            {name: per_dek.get(dek.pk, 0) for name, per_dek in counts.items()},
            now - dek.created,
        )
        for dek in of_tenant.filter(live | Q(pk__in=shown_others))
        .select_related("kek_version")
        .defer("wrapped", "kek_version__material", "kek_version__expiry_warnings_sent")
    ]
    not_shown = max(0, others.count() - len(shown_others))
    active = next((row.dek for row in deks if row.dek.state == DekState.ACTIVE), None)
    jobs = data_jobs(tenant)
    open_job = next((j for j in jobs if j.is_open), None)
    return KeysOverview(
        source=source,
        description=description,
        kek_versions=list(
            KekVersion.objects.filter(source__tenant=tenant)
            .select_related("source")
            # What the table shows: not the sources' settings and test results,
            # fifty times over.
            .only("provider_version", "state", "created", "source__kind", "source__tenant")
            .annotate(
                live_deks=Count(
                    "data_keys",
                    filter=Q(data_keys__state__in=[DekState.ACTIVE, DekState.RETIRING]),
                )
            )
            .order_by("-created")
        ),
        deks=deks,
        next_rotation=active.created + timedelta(days=tenant.dek_rotation_days) if active else None,
        ttl_seconds=tenant.dek_cache_ttl,
        open_job=open_job,
        last_job=jobs[0] if jobs else None,
        records_on_older_deks=sum(
            row.records for row in deks if active is not None and row.dek.pk != active.pk
        ),
        objects_on_older_deks=sum(
            row.objects for row in deks if active is not None and row.dek.pk != active.pk
        ),
        deks_not_shown=not_shown,
    )


@dataclass(frozen=True)
class EnablingProgress:
    source: KeySource
    done: int
    total: int
    label: str = "Moving data keys"

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, self.done * 100 // self.total)


def enabling_progress(tenant: Tenant) -> EnablingProgress | None:
    """While data keys move between key sources or versions: how many have moved.

    Covers enabling a customer key (migrating), rewrapping after a confirmed
    rotation, and going back to the vendor-managed key (migrating_back).
    """
    live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES)
    if tenant.state == ServiceState.MIGRATING:
        source = (
            KeySource.objects.filter(tenant=tenant, state=SourceState.TESTED)
            .order_by("-updated")
            .first()
        )
        if source is None:
            return None
        done = live.filter(kek_version__source=source).count()
    elif tenant.state == ServiceState.REWRAPPING:
        source = (
            KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
            .exclude(kind=SourceKind.LOCAL)
            .first()
        )
        if source is None:
            return None
        newest = source.versions.order_by("-created").first()
        done = live.filter(kek_version=newest).count()
    elif tenant.state == ServiceState.MIGRATING_BACK:
        source = KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).first()
        if source is None:
            return None
        done = live.filter(kek_version__source=source).count()
    else:
        return None
    labels = {
        ServiceState.MIGRATING: "Moving data keys under your key",
        ServiceState.REWRAPPING: "Rewrapping data keys under the new key version",
        ServiceState.MIGRATING_BACK: "Moving data keys back to the vendor-managed key",
    }
    return EnablingProgress(source, done, live.count(), labels[ServiceState(tenant.state)])


ROTATION_ACTIONS = (
    "dek.rotate",
    "kek.rewrap",
    "key.rotation_detected",
    "kek.confirm_rotation",
    "kek.reject_rotation",
    "kek.rotate_now",
    "kek.rotation_done",
    "byok.enabled",
    "key.upload",
)


def rotation_history(tenant: Tenant, limit: int = 50) -> list[Any]:
    """KEK and DEK rotations of the tenant, newest first: who, when, why (from the trail)."""
    return list(
        AuditEvent.objects.filter(chain=chain_key(tenant), action__in=ROTATION_ACTIONS).order_by(
            "-seq"
        )[:limit]
    )


@dataclass(frozen=True)
class RevocationBound:
    """How long Keyward may still read a tenant's data after the customer cuts off
    their key in their key store: one number, shown the same on every page."""

    customer_key: bool  # False: vendor-managed, the customer has nothing to cut off
    cache_seconds: int  # how long an unwrapped data key may stay in memory
    check_seconds: int  # how often the key health check asks the key store

    @property
    def seconds(self) -> int:
        # A cached data key serves until its lifetime ends; the health check
        # that sees the key gone makes every process drop it, at the latest one
        # interval after the cut. The bound is the sum: it holds even for a key
        # unwrapped the instant before the cut and a check that just ran.
        return self.cache_seconds + self.check_seconds


def revocation_bound(tenant: Tenant) -> RevocationBound:
    return RevocationBound(
        customer_key=KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .exists(),
        cache_seconds=tenant.dek_cache_ttl,
        check_seconds=int(settings.KEYWARD_HEALTH_CHECK_SECONDS),
    )


# The audit actions that end a move of the data keys.
_MOVE_ENDS = {
    "byok.enabled": "Moved under your key",
    "byok.removed": "Moved back to the vendor-managed key",
    "kek.rotation_done": "Rewrapped under the new key version",
}


@dataclass(frozen=True)
class KeyMoveSummary:
    label: str
    finished: datetime
    data_keys: int
    # The data consumers' sentences ("60 objects moved, 60 verified, 215.7 KB").
    data: list[str]


def last_key_move(tenant: Tenant) -> KeyMoveSummary | None:
    """The latest finished move of the tenant's data keys, to show once its bar is gone."""
    event = (
        AuditEvent.objects.filter(chain=chain_key(tenant), action__in=list(_MOVE_ENDS))
        .order_by("-seq")
        .first()
    )
    if event is None:
        return None
    return KeyMoveSummary(
        label=_MOVE_ENDS[event.action],
        finished=event.time,
        data_keys=DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES).count(),
        data=data_move_summaries(tenant),
    )


# Where a pending rotation came from, in the words the console uses.
ROTATION_CAUSES = {
    "upload": "An administrator uploaded a new key in Keyward.",
    "store_version": "A new version of your key appeared in your key store.",
    "alias": "Your key alias now points to another key.",
    "material": "Your key's material was rotated in your key store.",
    "on_request": "A new key was made in your key store at an administrator's request.",
}


def rotation_cause(tenant: Tenant) -> str | None:
    """Where the pending rotation came from, in a sentence (banner, review page)."""
    if tenant.state != ServiceState.ROTATION_PENDING:
        return None
    event = (
        AuditEvent.objects.filter(
            chain=chain_key(tenant), action__in=["key.rotation_detected", "kek.rotate_now"]
        )
        .order_by("-seq")
        .first()
    )
    if event is None:
        return None
    cause = str((event.details or {}).get("cause", ""))
    return ROTATION_CAUSES.get(cause) or f"{event.reason[:1].upper()}{event.reason[1:]}."
