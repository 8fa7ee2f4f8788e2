"""Celery tasks of the records app: they take ids and call services."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
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


@shared_task(
    name=RUN_REENCRYPTION,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    max_retries=10,
)
def run_reencryption(job_id: str) -> None:
    """Cut the job into parts and hand each unfinished one to a worker."""
    for part_id in reencryption_split(job_id=job_id):
        run_reencryption_part.delay(part_id)


@shared_task(
    name=RUN_REENCRYPTION_PART,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    max_retries=10,
)
def run_reencryption_part(part_id: int) -> None:
    reencryption_run_part(part_id=part_id)


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
