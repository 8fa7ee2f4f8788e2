from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from keys.providers.base import KeyUnavailable
from objects.migration import LOCK_LOST, RUN_MIGRATION, migration_run
from objects.models import OPEN_MIGRATION_STATES, MigrationState, ObjectMigration
from objects.services import objects_sweep_orphans
from objects.storage import StorageError
from tenants.models import MIGRATING_STATES, Tenant

logger = logging.getLogger(__name__)


class MigrationInterrupted(Exception):
    """The run lost its database session (and its lock with it) and stopped."""


# A database restart or a cut connection ends the run with OperationalError
# (or InterfaceError on a connection already closed under it), or with its lock
# lost. Without retrying here, the move would wait for the beat's resume job
# (up to its five-minute period) though the database is back within seconds;
# the run is idempotent and resumes from its items' states.
@shared_task(
    name=RUN_MIGRATION,
    autoretry_for=(
        KeyUnavailable,
        StorageError,
        ConnectionError,
        TimeoutError,
        OperationalError,
        InterfaceError,
        MigrationInterrupted,
    ),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_migration(migration_id: str) -> str:
    """Run or resume a move of a tenant's objects (idempotent: see migration_run)."""
    result = migration_run(migration_id)
    if result == LOCK_LOST:
        raise MigrationInterrupted(f"object migration {migration_id} lost its database session")
    return result


@shared_task(name="objects.resume_migrations")
def resume_migrations() -> int:
    """Beat: send again the migrations that a lost worker left open, or that were
    stopped while the tenant left the migrating state and may go on now."""
    resumed = 0
    open_ = ObjectMigration.objects.filter(
        state__in=OPEN_MIGRATION_STATES, tenant__state__in=MIGRATING_STATES
    ).values_list("pk", "state")
    for migration_id, state in open_:
        logger.info("resuming object migration %s (%s)", migration_id, state)
        run_migration.delay(str(migration_id))
        resumed += 1
    # After the switch the tenant's state does not matter: finish deleting.
    for migration_id in (
        ObjectMigration.objects.filter(state=MigrationState.DELETING)
        .exclude(tenant__state__in=MIGRATING_STATES)
        .values_list("pk", flat=True)
    ):
        run_migration.delay(str(migration_id))
        resumed += 1
    return resumed


@shared_task(name="objects.sweep_orphans")
def sweep_orphans() -> int:
    """Beat: note the stored versions that no row names, delete those noted long
    enough ago (objects_sweep_orphans); a store that fails skips its tenant."""
    deleted = 0
    for tenant in Tenant.objects.order_by("pk"):
        try:
            deleted += objects_sweep_orphans(tenant)[1]
        except StorageError as exc:
            logger.warning("object sweep of tenant %s skipped: %s", tenant.pk, exc)
    return deleted
