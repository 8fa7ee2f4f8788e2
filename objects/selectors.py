"""Reads of a tenant's objects and of the moves between storage locations."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet, Sum
from django.template.defaultfilters import filesizeformat, pluralize

from objects.models import (
    OPEN_MIGRATION_STATES,
    ObjectMigration,
    ObjectUsageCount,
    StoredObject,
)
from tenants.models import Tenant


def objects_of_tenant(tenant: Tenant) -> QuerySet[StoredObject]:
    return StoredObject.objects.filter(tenant=tenant)


@dataclass(frozen=True)
class UsageRow:
    label: str
    count: int
    bytes: int


@dataclass(frozen=True)
class ObjectsUsage:
    by_location: list[UsageRow]
    by_dek: list[UsageRow]
    count: int
    bytes: int


def _usage(tenant: Tenant) -> QuerySet[ObjectUsageCount]:
    """The tenant's object counters (ObjectUsageCount), exact and kept by the database:
    a few rows per location and DEK, however many objects there are."""
    return ObjectUsageCount.objects.filter(tenant=tenant).order_by()


def object_counts_by_dek(tenant: Tenant) -> dict[int, int]:
    rows = _usage(tenant).values("dek_id").annotate(n=Sum("count"))
    return {row["dek_id"]: row["n"] for row in rows if row["n"]}


def objects_usage(tenant: Tenant) -> ObjectsUsage:
    """Object counts and bytes per storage location and per DEK, from the counters."""
    by_location = [
        UsageRow(str(row["location"]), row["n"], row["b"] or 0)
        for row in _usage(tenant)
        .values("location")
        .annotate(n=Sum("count"), b=Sum("bytes"))
        .order_by("location")
        if row["n"]
    ]
    by_dek = [
        UsageRow(f"DEK v{row['dek__version']} ({row['dek__state']})", row["n"], row["b"] or 0)
        for row in _usage(tenant)
        .values("dek__version", "dek__state")
        .annotate(n=Sum("count"), b=Sum("bytes"))
        .order_by("-dek__version")
        if row["n"]
    ]
    return ObjectsUsage(
        by_location=by_location,
        by_dek=by_dek,
        count=sum(r.count for r in by_location),
        bytes=sum(r.bytes for r in by_location),
    )


def migrations_of_tenant(tenant: Tenant, limit: int = 20) -> list[ObjectMigration]:
    return list(ObjectMigration.objects.filter(tenant=tenant).select_related("target_dek")[:limit])


def migration_for_tenant(tenant: Tenant, migration_id: str) -> ObjectMigration | None:
    return ObjectMigration.objects.filter(tenant=tenant, pk=migration_id).first()


def current_migration(tenant: Tenant) -> ObjectMigration | None:
    """The tenant's open migration, if one is under way."""
    return (
        ObjectMigration.objects.filter(tenant=tenant, state__in=OPEN_MIGRATION_STATES)
        .order_by("-started")
        .first()
    )


@dataclass(frozen=True)
class MigrationProgress:
    migration: ObjectMigration
    percent: int
    label: str


def migration_progress(tenant: Tenant) -> MigrationProgress | None:
    """The open migration's progress for a banner or a progress bar; None when none runs."""
    migration = current_migration(tenant)
    if migration is None:
        return None
    m = migration
    label = (
        f"{m.get_state_display()}: {m.copied} of {m.total} objects copied, "
        f"{m.verified} verified, {m.deleted} old copies deleted"
    )
    return MigrationProgress(migration=m, percent=m.percent, label=label)


def last_move_summary(tenant: Tenant) -> str | None:
    """The latest finished move of the tenant's objects, in a sentence."""
    migration = (
        ObjectMigration.objects.filter(tenant=tenant, finished__isnull=False)
        .order_by("-finished")
        .first()
    )
    if migration is None:
        return None
    return (
        f"{migration.copied} object{pluralize(migration.copied)} moved, "
        f"{migration.verified} verified, "
        f"{filesizeformat(migration.bytes_copied).replace(chr(0xA0), ' ')}"
    )
