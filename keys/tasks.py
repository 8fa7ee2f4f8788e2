"""Celery tasks of keys: each takes ids, loads the rows and calls a service.

The services enqueue these by name (`current_app.send_task`), with the names
defined beside them, so this module imports the services and not the reverse.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task
from celery.signals import worker_process_shutdown
from django.conf import settings
from django.utils import timezone

from audit.models import AuditEvent, Outcome
from audit.services import Actor, record
from keys.errors import KeyActionRefused
from keys.expiry import warn_expiring_keys as warn
from keys.models import DataKey, DekState, KeySource, SourceState
from keys.providers.base import KeyAccessDenied, KeyMaterialInvalid, KeyUnavailable
from keys.runtime import ROTATE_DEK_FOR_COUNT_TASK, flush_counts
from keys.services.deks import dek_retire_unused, dek_rotate, dek_rotate_if_due
from keys.services.formats import REWRAP_OLD_FORMATS_TASK, wrapped_formats_upgrade
from keys.services.health import (
    CHECK_TENANT_KEY_HEALTH_TASK,
    key_health_check,
    key_health_round,
)
from keys.services.lifecycle import RUN_BYOK_REMOVE_TASK, byok_remove_run, tenant_destroy_due
from keys.services.rotation import RUN_KEK_REWRAP_TASK, kek_rewrap_run
from keys.services.sources import RUN_BYOK_ENABLE_TASK, byok_enable_run
from keys.services.uploads import key_imports_expire
from keys.usage import flush_usage, sample_volumes
from telemetry.metrics import HEALTH_ROUND_COMPLETED, HEALTH_ROUND_DURATION
from tenants.models import ServiceState, Tenant

logger = logging.getLogger(__name__)


def _record_stall(source_id: str, action: str, reason: str) -> None:
    source = KeySource.objects.select_related("tenant").get(pk=source_id)
    record(
        tenant=source.tenant,
        actor=Actor.system("key jobs"),
        action=action,
        outcome=Outcome.FAILURE,
        reason=f"stopped, will resume when the key works again: {reason}",
    )


def _record_waiting(tenant: Tenant, action: str, exc: KeyUnavailable) -> None:
    """A move stopped because the key store did not answer: said once per outage.

    The task retries with back-off and the beat resumes it; each failed attempt
    would otherwise add the same line to the tenant's trail.
    """
    last = (
        AuditEvent.objects.filter(tenant=tenant)
        .order_by("-seq")
        .values_list("action", "outcome")
        .first()
    )
    if last == (action, Outcome.FAILURE):
        return
    record(
        tenant=tenant,
        actor=Actor.system("key jobs"),
        action=action,
        outcome=Outcome.FAILURE,
        reason=f"stopped, resumes by itself when the key store answers again: {exc}",
    )


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
        except Exception:  # one tenant's key store must not hold the others' rotations
            logger.exception("scheduled rotation failed for %s", tenant.slug)
    return rotated


@shared_task(name=ROTATE_DEK_FOR_COUNT_TASK)
def rotate_dek_for_count(tenant_id: str) -> None:
    """Rotate a DEK nearing its encryption limit; a no-op if it was rotated meanwhile."""
    tenant = Tenant.objects.get(pk=tenant_id)
    if tenant.is_paused:
        return  # the write path rotates synchronously at the hard limit if it must
    current = DataKey.objects.filter(tenant=tenant, state=DekState.ACTIVE).first()
    threshold = settings.KEYWARD_DEK_MAX_ENCRYPTIONS * settings.KEYWARD_DEK_ROTATE_AT_FRACTION
    if current is None or current.encryptions_reserved < threshold:
        return
    dek_rotate(
        tenant=tenant,
        actor=Actor.system("encryption limit"),
        reason=f"DEK v{current.version} neared its encryption limit",
    )


@worker_process_shutdown.connect
def _flush_counts_on_shutdown(**_: object) -> None:
    flush_counts()
    flush_usage()


@shared_task(
    name=RUN_BYOK_ENABLE_TASK,
    autoretry_for=(KeyUnavailable, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_byok_enable(source_id: str) -> None:
    try:
        byok_enable_run(source_id=source_id)
    except KeyUnavailable as exc:
        _record_waiting(KeySource.objects.get(pk=source_id).tenant, "byok.enable", exc)
        raise
    except (KeyAccessDenied, KeyMaterialInvalid, KeyActionRefused) as exc:
        # Not transient: say so in the tenant's trail; the beat resumes the move
        # once the administrator fixed the key (resume_key_jobs).
        _record_stall(source_id, "byok.enable", str(exc))


@shared_task(name="keys.check_key_health")
def check_key_health() -> dict[str, str]:
    """Beat: check the key of every BYOK tenant (one failing key never stops the rest).

    One call per distinct key, spread over the round (`key_health_round`).
    The round's duration and end are metrics: a round longer than the interval
    means the next ones queue up and revocations are seen late (an alert).
    """
    started = time.perf_counter()
    found = key_health_round()
    HEALTH_ROUND_DURATION.set(time.perf_counter() - started)
    HEALTH_ROUND_COMPLETED.set(time.time())
    return found


@shared_task(name=CHECK_TENANT_KEY_HEALTH_TASK)
def check_tenant_key_health(tenant_id: str) -> str:
    """One tenant's check, asked for now (support); the same check the beat runs."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        return "skipped"
    return key_health_check(tenant=tenant)


@shared_task(name="keys.warn_expiring_keys")
def warn_expiring_keys() -> int:
    return warn()


@shared_task(name="keys.expire_key_imports")
def expire_key_imports() -> int:
    """Beat: destroy the private keys of imports whose validity ended."""
    return key_imports_expire()


@shared_task(name="keys.sample_key_usage")
def sample_key_usage() -> int:
    """Beat: today's data per data key and tenants per state, for the charts."""
    return sample_volumes(timezone.now().date())


@shared_task(name=REWRAP_OLD_FORMATS_TASK)
def rewrap_old_formats() -> int:
    """Beat: rewrap the blobs in a format read but no longer written; how many."""
    report = wrapped_formats_upgrade(actor=Actor.system("wrapped key format upgrade"))
    return sum(report.rewrapped.values())


@shared_task(
    name=RUN_KEK_REWRAP_TASK,
    autoretry_for=(KeyUnavailable, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_kek_rewrap(source_id: str) -> str:
    try:
        return kek_rewrap_run(source_id=source_id)
    except KeyUnavailable as exc:
        _record_waiting(KeySource.objects.get(pk=source_id).tenant, "kek.rewrap", exc)
        raise
    except (KeyAccessDenied, KeyMaterialInvalid) as exc:
        _record_stall(source_id, "kek.rewrap", str(exc))
        return "stalled"


@shared_task(name="keys.run_due_destructions")
def run_due_destructions() -> int:
    due = Tenant.objects.filter(destroy_after__lte=timezone.now()).values_list("pk", flat=True)
    return sum(1 for tenant_id in list(due) if tenant_destroy_due(tenant_id=str(tenant_id)))


@shared_task(
    name=RUN_BYOK_REMOVE_TASK,
    autoretry_for=(KeyUnavailable, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def run_byok_remove(tenant_id: str) -> str:
    try:
        return byok_remove_run(tenant_id=tenant_id)
    except KeyUnavailable as exc:
        _record_waiting(Tenant.objects.get(pk=tenant_id), "byok.remove", exc)
        raise


@shared_task(name="keys.resume_key_jobs")
def resume_key_jobs() -> int:
    """Beat: pick up key moves that stopped (a crash, a broker outage, a key that was away).

    Every job below is idempotent and resumes where it stopped, so enqueuing one
    that is still running costs a little work and changes nothing.
    """

    resumed = 0
    for tenant in Tenant.objects.filter(
        state__in=[ServiceState.MIGRATING, ServiceState.REWRAPPING, ServiceState.MIGRATING_BACK]
    ):
        if tenant.state == ServiceState.MIGRATING_BACK:
            run_byok_remove.delay(str(tenant.pk))
        elif tenant.state == ServiceState.REWRAPPING:
            source = (
                KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
                .exclude(kind="local")
                .first()
            )
            if source is not None:
                run_kek_rewrap.delay(str(source.pk))
        else:
            source = (
                KeySource.objects.filter(tenant=tenant, state=SourceState.TESTED)
                .order_by("-updated")
                .first()
            )
            if source is not None:
                run_byok_enable.delay(str(source.pk))
        resumed += 1
    return resumed


@shared_task(name="keys.retire_unused_deks")
def retire_unused_deks() -> int:
    """Beat: retire decrypt-only DEKs that nothing depends on any more (after the grace)."""
    retired = 0
    for tenant in Tenant.objects.filter(data_keys__state=DekState.RETIRING).distinct():
        retired += len(dek_retire_unused(tenant=tenant))
    return retired
