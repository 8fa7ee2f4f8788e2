"""Celery tasks of the records app: they take ids and call services."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from crypto.envelope import KeyRevoked
from keys.providers.base import KeyAccessDenied, KeyUnavailable
from records.indexkeys import REBUILD_BLIND_INDEX, index_rebuild
from records.models import IndexKey, IndexKeyState, JobState, ReencryptionJob
from records.reencryption import (
    RUN_REENCRYPTION,
    RUN_REENCRYPTION_PART,
    reencryption_run_part,
    reencryption_split,
)

logger = logging.getLogger(__name__)


def _after_lost_database(retries: int) -> int:
    return get_exponential_backoff_interval(factor=1, retries=retries, maximum=10, full_jitter=True)


# A database restart ends a run with OperationalError (InterfaceError on a
# connection already closed under it). Without retrying here the job waited for
# the beat's resume job (ten minutes). Each batch commits with its checkpoint,
# so a retry resumes after the last committed one; these retries have no limit
# and wait at most 10 s, so that a long job living through several restarts
# neither spends the budget of the other retries nor waits minutes each time.
@shared_task(
    bind=True,
    name=RUN_REENCRYPTION,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    max_retries=10,
)
def run_reencryption(self: Task, job_id: str) -> None:
    """Cut the job into parts and hand each unfinished one to a worker."""
    try:
        part_ids = reencryption_split(job_id=job_id)
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(
            exc=exc, countdown=_after_lost_database(self.request.retries), max_retries=None
        ) from exc
    for part_id in part_ids:
        run_reencryption_part.delay(part_id)


@shared_task(
    bind=True,
    name=RUN_REENCRYPTION_PART,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    max_retries=10,
)
def run_reencryption_part(self: Task, part_id: int) -> None:
    # Each part commits with its own checkpoint: a retry resumes the part there.
    try:
        reencryption_run_part(part_id=part_id)
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(
            exc=exc, countdown=_after_lost_database(self.request.retries), max_retries=None
        ) from exc


@shared_task(
    name=REBUILD_BLIND_INDEX,
    autoretry_for=(KeyUnavailable,),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=None,
)
def rebuild_blind_index(index_key_id: int) -> None:
    """Fill a new lookup key version and switch to it; resumes from its checkpoint."""
    try:
        index_rebuild(index_key_id=index_key_id)
    except (KeyRevoked, KeyAccessDenied):
        # The customer cut access: nothing decrypts; a rotation after restore resumes it.
        logger.warning("lookup rebuild %s held: the tenant's key is not usable", index_key_id)


@shared_task(name="records.resume_reencryptions")
def resume_reencryptions() -> int:
    """Beat: pick up re-encryptions and lookup rebuilds that stopped (a crash, a
    broker outage).

    Both resume after their checkpoint, so enqueuing one that still runs costs
    a little work and changes nothing.
    """
    stale = timezone.now() - timedelta(minutes=10)
    resumed = 0
    for key_id in IndexKey.objects.filter(
        state=IndexKeyState.BUILDING, created__lt=stale
    ).values_list("pk", flat=True):
        rebuild_blind_index.delay(key_id)
        resumed += 1
    for job_id in ReencryptionJob.objects.filter(
        state__in=[JobState.QUEUED, JobState.RUNNING], created__lt=stale
    ).values_list("pk", flat=True):
        run_reencryption.delay(str(job_id))
        resumed += 1
    return resumed
