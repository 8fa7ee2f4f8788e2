from __future__ import annotations

import logging

from celery import shared_task

from api.idempotency import purge_expired
from api.indexkeys import index_rebuild
from keys.envelope import KeyRevoked
from keys.providers.base import KeyAccessDenied, KeyUnavailable

logger = logging.getLogger(__name__)


@shared_task(
    name="api.rebuild_blind_index",
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


@shared_task(name="api.purge_idempotency_keys")
def purge_idempotency_keys() -> int:
    """Delete idempotency keys past their 24 hours (expired ones are never replayed anyway)."""
    return purge_expired()
