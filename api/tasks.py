from __future__ import annotations

from celery import shared_task

from api.idempotency import purge_expired


@shared_task(name="api.purge_idempotency_keys")
def purge_idempotency_keys() -> int:
    """Delete idempotency keys past their 24 hours (expired ones are never replayed anyway)."""
    return purge_expired()
