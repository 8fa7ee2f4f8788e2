"""A tenant's objects follow its key: moved to dedicated storage on Enable, back on removal.

Enabling BYOK (and removing it) has two phases while the tenant stays paused
(`migrating` / `migrating_back`: writes refused, reads served from where each
object is now):

1. the data keys are rewrapped under the new key source, and the source is
   switched (keys/sources.py `byok_enable_run`, keys/lifecycle.py
   `byok_remove_run`);
2. when the tenant has objects in the location it is leaving, a new data key
   under the new source is made and the objects move, re-encrypted under it
   (objects/migration.py). The tenant reaches its final state only when that
   move is done: the migration engine tells keys (`data_move_finished`) after
   its last commit, and should that be lost with a worker, the resumed run of
   the key move asks again (`objects_move_next`).

Keys reach these functions only through the consumer registry
(`objects.apps` registers them as the objects' `DataMove`).

A failed move (verification) keeps the tenant paused with the source copies
in place; `objects_move_retry` starts it again once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction

from audit.services import Actor, record
from keys.consumers import TO_DEDICATED, TO_SHARED
from keys.errors import KeyActionRefused
from keys.models import DataKey, KeySource
from objects.migration import enqueue_run, migration_start
from objects.models import Location, MigrationState, ObjectMigration, StoredObject
from tenants.models import ServiceState, Tenant

_MOVING_STATE = {TO_DEDICATED: ServiceState.MIGRATING, TO_SHARED: ServiceState.MIGRATING_BACK}


def objects_move_begin(
    tenant: Tenant, source: KeySource, direction: str, new_dek: Callable[[], DataKey]
) -> bool:
    """In the switch's transaction (tenant row locked): start moving the tenant's
    objects when it has any where it is leaving, under a new DEK of `source`
    (`new_dek()`). True when a move started."""
    leaving = Location.SHARED if direction == TO_DEDICATED else Location.DEDICATED
    if not StoredObject.objects.filter(tenant=tenant, location=leaving).exists():
        return False
    dek = new_dek()
    migration = migration_start(tenant=tenant, direction=direction, target_dek_id=dek.pk)
    enqueue_run(migration)
    return True


def objects_move_next(tenant: Tenant, direction: str) -> str:
    """After the switch: "done" when the last move is done, else make sure it runs."""
    latest = (
        ObjectMigration.objects.filter(tenant=tenant, direction=direction)
        .order_by("-started")
        .first()
    )
    if latest is None or latest.state == MigrationState.DONE:
        return "done"
    if latest.state == MigrationState.FAILED:
        return "failed"  # waits for objects_move_retry
    with transaction.atomic():
        enqueue_run(latest)
    return "moving"


def objects_move_retry(tenant: Tenant, actor: Actor) -> str:
    """Start a failed move again (a new manifest of what is still to move)."""
    latest = ObjectMigration.objects.filter(tenant=tenant).order_by("-started").first()
    if latest is None or latest.state != MigrationState.FAILED:
        raise KeyActionRefused("There is no failed move of this tenant's objects to retry.")
    if Tenant.objects.get(pk=tenant.pk).state != _MOVING_STATE.get(latest.direction):
        raise KeyActionRefused("The tenant is no longer waiting for this move.")
    with transaction.atomic():
        migration = migration_start(
            tenant=tenant,
            direction=latest.direction,
            target_dek_id=latest.target_dek_id,
            actor=actor,
        )
        record(
            tenant=tenant,
            actor=actor,
            action="objects.migration_retry",
            target=latest.direction,
            details={"failed": str(latest.pk), "migration": str(migration.pk)},
        )
        enqueue_run(migration)
    return "Moving the objects again; the progress shows on the Data page."
