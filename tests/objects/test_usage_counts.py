"""Objects and bytes per location and per DEK come from counters the database keeps
(objects.models.ObjectUsageCount): they must equal a real count after every kind of write."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.db.models import Count, Sum

from keys.consumers import counts_by_dek
from objects.migration import migration_run, migration_start
from objects.models import Direction, Location, MigrationState, StoredObject
from objects.selectors import object_counts_by_dek, objects_usage
from objects.services import object_delete, object_put, objects_reencrypt_pass
from tenants.models import Tenant
from tests.objects.conftest import MIGRATING, active_dek, new_target_dek, set_state


def counted(tenant: Tenant) -> dict[tuple[str, int], tuple[int, int]]:
    """What the counters stand in for: every object row, grouped."""
    rows = (
        StoredObject.objects.filter(tenant=tenant)
        .values("location", "dek_id")
        .annotate(n=Count("id"), b=Sum("size"))
        .order_by()
    )
    return {(row["location"], row["dek_id"]): (row["n"], row["b"]) for row in rows}


def assert_exact(tenant: Tenant) -> dict[tuple[str, int], tuple[int, int]]:
    truth = counted(tenant)
    usage = objects_usage(tenant)
    by_location: dict[str, list[int]] = {}
    by_dek: dict[int, int] = {}
    for (location, dek_id), (n, b) in truth.items():
        by_location.setdefault(location, [0, 0])
        by_location[location][0] += n
        by_location[location][1] += b
        by_dek[dek_id] = by_dek.get(dek_id, 0) + n
    assert {r.label: [r.count, r.bytes] for r in usage.by_location} == by_location
    assert object_counts_by_dek(tenant) == by_dek
    assert sorted(r.count for r in usage.by_dek) == sorted(by_dek.values())
    assert usage.count == sum(n for n, _b in truth.values())
    assert usage.bytes == sum(b for _n, b in truth.values())
    return truth


def put(tenant: Tenant, key: str, size: int) -> None:
    object_put(tenant=tenant, key=key, chunks=[b"x" * size])


@pytest.mark.django_db(transaction=True)
def test_counts_stay_exact_through_puts_deletes_reencryption_and_a_move(acme: Any) -> None:
    tenant = acme.tenant
    first = active_dek(tenant)
    for n in range(6):
        put(tenant, f"docs/{n}", 100 + n)
    assert assert_exact(tenant) == {(Location.SHARED, first.pk): (6, 615)}

    # A replaced object keeps its count and changes its bytes; a delete takes both.
    put(tenant, "docs/0", 1000)
    object_delete(tenant=tenant, key="docs/5")
    assert assert_exact(tenant) == {(Location.SHARED, first.pk): (5, 1410)}

    # A put that rolls back leaves the counts as they were.
    with pytest.raises(RuntimeError), transaction.atomic():
        put(tenant, "docs/late", 50)
        raise RuntimeError("the caller fails")
    assert_exact(tenant)

    # DEK rotation: new objects under the new DEK; re-encryption moves the others to it.
    second = new_target_dek(tenant)
    put(tenant, "docs/new", 7)
    assert assert_exact(tenant) == {
        (Location.SHARED, first.pk): (5, 1410),
        (Location.SHARED, second.pk): (1, 7),
    }
    assert counts_by_dek(tenant)["objects"] == {first.pk: 5, second.pk: 1}
    assert objects_reencrypt_pass(tenant) == (5, [])
    assert assert_exact(tenant) == {(Location.SHARED, second.pk): (6, 1417)}

    # A move to dedicated storage changes the location and the DEK of every object.
    target = new_target_dek(tenant)
    set_state(tenant, MIGRATING)
    migration = migration_start(
        tenant=tenant, direction=Direction.TO_DEDICATED, target_dek_id=target.pk
    )
    assert migration_run(str(migration.pk)) == MigrationState.DONE
    assert assert_exact(tenant) == {(Location.DEDICATED, target.pk): (6, 1417)}
