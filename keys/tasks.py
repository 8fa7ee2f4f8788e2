from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_process_shutdown

from audit.services import Actor
from keys.models import DataKey, DekState
from keys.providers.base import KeyUnavailable
from keys.services import KeyActionRefused, dek_rotate, dek_rotate_if_due, reencryption_run
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@shared_task(name="keys.rotate_due_deks")
def rotate_due_deks() -> int:
    """Beat: rotate the DEK of every tenant whose DEK is older than its period."""
    rotated = 0
    for tenant in Tenant.objects.all().iterator():
        try:
            if dek_rotate_if_due(tenant=tenant) is not None:
                rotated += 1
        except KeyActionRefused as exc:
            logger.info("scheduled rotation held for %s: %s", tenant.slug, exc)
    return rotated


@shared_task(name="keys.rotate_dek_for_count")
def rotate_dek_for_count(tenant_id: str) -> None:
    """Rotate a DEK nearing its encryption limit; a no-op if it was rotated meanwhile."""
    from django.conf import settings

    tenant = Tenant.objects.get(pk=tenant_id)
    current = DataKey.objects.filter(tenant=tenant, state=DekState.ACTIVE).first()
    threshold = settings.KEYWARD_DEK_MAX_ENCRYPTIONS * settings.KEYWARD_DEK_ROTATE_AT_FRACTION
    if current is None or current.encryptions_reserved < threshold:
        return
    dek_rotate(
        tenant=tenant,
        actor=Actor.system("encryption limit"),
        reason=f"DEK v{current.version} neared its encryption limit",
    )


@shared_task(
    name="keys.run_reencryption",
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    max_retries=10,
)
def run_reencryption(job_id: str) -> None:
    reencryption_run(job_id=job_id)


@worker_process_shutdown.connect
def _flush_counts_on_shutdown(**_: object) -> None:
    from keys.runtime import flush_counts

    flush_counts()


@shared_task(
    name="keys.run_byok_enable",
    autoretry_for=(KeyUnavailable, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_byok_enable(source_id: str) -> None:
    from keys.sources import byok_enable_run

    byok_enable_run(source_id=source_id)


@shared_task(name="keys.check_key_health")
def check_key_health() -> dict[str, str]:
    """Beat: check the key of every BYOK tenant (one failing tenant never stops the rest)."""
    from keys.lifecycle import CHECKED_STATES, key_health_check

    found: dict[str, str] = {}
    for tenant in Tenant.objects.filter(state__in=CHECKED_STATES).iterator():
        try:
            found[tenant.slug] = key_health_check(tenant=tenant)
        except Exception:
            logger.exception("health check of %s failed", tenant.slug)
            found[tenant.slug] = "error"
    return found


@shared_task(name="keys.warn_expiring_keys")
def warn_expiring_keys() -> int:
    from keys.expiry import warn_expiring_keys as warn

    return warn()


@shared_task(
    name="keys.run_kek_rewrap",
    autoretry_for=(KeyUnavailable, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_kek_rewrap(source_id: str) -> str:
    from keys.lifecycle import kek_rewrap_run

    return kek_rewrap_run(source_id=source_id)


@shared_task(name="keys.run_due_destructions")
def run_due_destructions() -> int:
    from django.utils import timezone

    from keys.lifecycle import tenant_destroy_due

    due = Tenant.objects.filter(destroy_after__lte=timezone.now()).values_list("pk", flat=True)
    return sum(1 for tenant_id in list(due) if tenant_destroy_due(tenant_id=str(tenant_id)))


@shared_task(
    name="keys.run_byok_remove",
    autoretry_for=(KeyUnavailable, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_byok_remove(tenant_id: str) -> str:
    from keys.lifecycle import byok_remove_run

    return byok_remove_run(tenant_id=tenant_id)
