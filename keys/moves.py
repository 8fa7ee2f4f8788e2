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
   move is done, from `objects.signals.migration_finished` or, should that
   signal be lost with a worker, from the resumed run (`objects_move_next`).

A failed move (verification) keeps the tenant paused with the source copies
in place; `objects_move_retry` starts it again once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction

from audit.services import Actor, record
from keys.models import KeySource
from keys.services import KeyActionRefused, dek_rotate_for_move
from tenants.models import ServiceState, Tenant

TO_DEDICATED = "to_dedicated"
TO_SHARED = "to_shared"
_MOVING_STATE = {TO_DEDICATED: ServiceState.MIGRATING, TO_SHARED: ServiceState.MIGRATING_BACK}


def objects_move_begin(*, tenant: Tenant, source: KeySource, direction: str) -> bool:
    """In the switch's transaction (tenant row locked): start moving the tenant's
    objects when it has any where it is leaving. True when a move started."""
    from objects.migration import enqueue_run, migration_start
    from objects.models import Location, StoredObject

    leaving = Location.SHARED if direction == TO_DEDICATED else Location.DEDICATED
    if not StoredObject.objects.filter(tenant=tenant, location=leaving).exists():
        return False
    dek = dek_rotate_for_move(
        tenant=tenant, source=source, reason=f"objects move {direction.replace('_', ' ')}"
    )
    migration = migration_start(tenant=tenant, direction=direction, target_dek_id=dek.pk)
    enqueue_run(migration)
    return True


def objects_move_next(tenant: Tenant, direction: str, finish: Callable[[Tenant], Any]) -> str:
    """After the switch: finish when the last move is done, else make sure it runs."""
    from objects.migration import enqueue_run
    from objects.models import MigrationState, ObjectMigration

    latest = (
        ObjectMigration.objects.filter(tenant=tenant, direction=direction)
        .order_by("-started")
        .first()
    )
    if latest is None or latest.state == MigrationState.DONE:
        finish(tenant)
        return "done"
    if latest.state == MigrationState.FAILED:
        return "failed"  # waits for objects_move_retry
    with transaction.atomic():
        enqueue_run(latest)
    return "moving"


def objects_move_retry(*, tenant: Tenant, actor: Actor) -> str:
    """Start a failed move again (a new manifest of what is still to move)."""
    from objects.migration import enqueue_run, migration_start
    from objects.models import MigrationState, ObjectMigration

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


def on_migration_finished(sender: Any, migration: Any, **kwargs: Any) -> None:
    """`objects.signals.migration_finished`: the tenant may reach its final state."""
    from keys.lifecycle import byok_remove_finish
    from keys.sources import byok_enable_finish
    from objects.models import MigrationState

    if migration.state != MigrationState.DONE:
        return  # failed: the engine audited and alerted; the tenant stays paused
    tenant = Tenant.objects.get(pk=migration.tenant_id)
    if migration.direction == TO_DEDICATED:
        byok_enable_finish(tenant)
    else:
        byok_remove_finish(tenant)
