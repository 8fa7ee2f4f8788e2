from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.db import InterfaceError, OperationalError

from keys.providers.base import KeyUnavailable
from objects.migration import LOCK_LOST, RUN_MIGRATION, migration_run
from objects.models import OPEN_MIGRATION_STATES, MigrationState, ObjectMigration
from objects.services import objects_sweep_orphans
from objects.storage import StorageError
from tenants.models import MIGRATING_STATES, Tenant

logger = logging.getLogger(__name__)


def _after_lost_database(retries: int) -> int:
    return get_exponential_backoff_interval(factor=1, retries=retries, maximum=10, full_jitter=True)


# A database restart or a cut connection ends the run with OperationalError
# (or InterfaceError on a connection already closed under it), or with its lock
# lost. Without retrying here the move waited for the beat's resume job (up to
# its five-minute period) though the database was back within seconds. The run
# is idempotent and resumes from its items' states, so these retries have no
# limit and wait at most 10 s: a long move that lives through several restarts
# must not spend the budget of the other retries, nor wait minutes each time.
@shared_task(
    bind=True,
    name=RUN_MIGRATION,
    autoretry_for=(KeyUnavailable, StorageError, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_migration(self: Task, migration_id: str) -> str:
    """Run or resume a move of a tenant's objects (idempotent: see migration_run)."""
    try:
        result = migration_run(migration_id)
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(
            exc=exc, countdown=_after_lost_database(self.request.retries), max_retries=None
        ) from exc
    if result == LOCK_LOST:
        raise self.retry(countdown=_after_lost_database(self.request.retries), max_retries=None)
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
