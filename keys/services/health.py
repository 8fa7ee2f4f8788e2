"""Tenant key-state transitions the key store drives, each explicit and audited.

The health check calls `key_health_check`; it never revokes on a timeout:
an unreachable key store makes the tenant `degraded` (cached keys keep
serving until their TTL), and only an explicit denial (disabled, pending
deletion, access denied) makes it `revoked`.
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.errors import KeyActionRefused
from keys.models import (
    DataKey,
    DekState,
    HealthResult,
    KekState,
    KekVersion,
    KeyHealthCheck,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.notify import key_admin_emails, notify_key_admins
from keys.providers.base import (
    KeyAccessDenied,
    KeyUnavailable,
)
from keys.registry import provider_for
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition

HEALTH = Actor.system("key health check")
# The Celery task name (tasks.py registers it under this): one tenant's check, now.
CHECK_TENANT_KEY_HEALTH_TASK = "keys.check_tenant_key_health"


CHECKED_STATES = (ServiceState.BYOK_ACTIVE, ServiceState.DEGRADED)


# Paused for a rotation: still watched, so a key cut off meanwhile revokes.
WATCHED_STATES = (ServiceState.ROTATION_PENDING, ServiceState.REWRAPPING)


def tenant_mark_degraded(tenant: Tenant, reason: str) -> bool:
    moved = tenant_transition(
        tenant=tenant,
        to=ServiceState.DEGRADED,
        actor=HEALTH,
        action="key.degraded",
        outcome=Outcome.FAILURE,
        reason=reason,
    )
    return moved is not None


def tenant_mark_recovered(tenant: Tenant) -> bool:
    moved = tenant_transition(
        tenant=tenant,
        to=ServiceState.BYOK_ACTIVE,
        actor=HEALTH,
        action="key.recovered",
        reason="the key store answers again",
        only_from=(ServiceState.DEGRADED,),
    )
    return moved is not None


def tenant_mark_revoked(tenant: Tenant, reason: str) -> bool:
    """The customer cut access: every process drops the tenant's DEKs within a second."""
    moved = tenant_transition(
        tenant=tenant,
        to=ServiceState.REVOKED,
        actor=HEALTH,
        action="key.revoked",
        outcome=Outcome.DENIED,
        reason=reason,
    )
    if moved is not None:
        notify_key_admins(
            tenant,
            "your key was revoked",
            f"Keyward lost access to {tenant.name}'s key ({reason}). The tenant's data is "
            "unreadable. When the key is usable again, restore it from the Keys page.\n",
        )
    return moved is not None


def tenant_mark_rotation_pending(
    tenant: Tenant,
    source: KeySource,
    version: str,
    *,
    actor: Actor = HEALTH,
    action: str = "key.rotation_detected",
    reason: str = "the key in your key store changed; confirm the new version",
    request: HttpRequest | None = None,
    cause: str = "store_version",
) -> bool:
    """The key changed (in the customer's store, or uploaded by `actor`): pause the tenant.

    The pause is recorded under `action`: the health check's detection, or the
    person's own action that made the new version (rotate now). `cause` says
    where the change came from, for the banner and the review page: a key of
    keys.selectors.overview.ROTATION_CAUSES.
    """
    with transaction.atomic():
        pending, _ = KekVersion.objects.get_or_create(
            source=source, provider_version=version, defaults={"state": KekState.PENDING}
        )
        moved = tenant_transition(
            tenant=tenant,
            to=ServiceState.ROTATION_PENDING,
            actor=actor,
            action=action,
            target=version,
            reason=reason,
            details={"new_version": version, "kek_version": str(pending.pk), "cause": cause},
            request=request,
        )
        if moved is not None:
            notify_key_admins(
                tenant,
                "your key changed: confirm the new version",
                f"Keyward saw a new version of {tenant.name}'s key: {version}.\n\n"
                "The service is paused until an owner or key administrator reviews and "
                "confirms it (Keys, Review the new key version). Reads keep working; new "
                "data is held. If you did not rotate the key, choose 'This rotation was "
                "not ours' and check your key store's audit log.\n",
            )
        return moved is not None


def _in_use_versions(source: KeySource) -> set[str]:
    return set(
        DataKey.objects.filter(kek_version__source=source)
        .exclude(state__in=[DekState.RETIRED, DekState.DESTROYED])
        .values_list("kek_version__provider_version", flat=True)
    )


def key_health_check(*, tenant: Tenant) -> str:
    """Check one BYOK tenant's key; return what was found (for logs and tests).

    Each finding is kept (`KeyHealthCheck`) for the support console, with the
    key store's message; a check that raised is kept as an error, then re-raised.
    """
    tenant = Tenant.objects.get(pk=tenant.pk)  # the state now, not when the caller loaded it
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    if source is None or tenant.state not in CHECKED_STATES + WATCHED_STATES:
        return "skipped"
    try:
        found, message = _check(tenant, source)
    except Exception as exc:
        _note(tenant, source, HealthResult.ERROR, f"the check failed: {type(exc).__name__}")
        raise
    _note(tenant, source, found, message)
    return found


def _check(tenant: Tenant, source: KeySource) -> tuple[str, str]:
    try:
        health = provider_for(source).health()
    except KeyUnavailable as exc:
        reason = f"key store unreachable: {exc}"
        tenant_mark_degraded(tenant, reason)
        return HealthResult.DEGRADED, reason
    except KeyAccessDenied as exc:
        reason = f"access to the key was denied: {exc}"
        tenant_mark_revoked(tenant, reason)
        return HealthResult.REVOKED, reason
    if not health.usable:
        tenant_mark_revoked(tenant, health.detail)
        return HealthResult.REVOKED, health.detail
    if tenant.state in WATCHED_STATES:
        return HealthResult.OK, ""  # paused for a rotation: only a cut-off changes anything now
    tenant_mark_recovered(tenant)
    if health.version not in _in_use_versions(source):
        alias = ":alias/" in str(source.config.get("key_arn", ""))
        tenant_mark_rotation_pending(
            tenant, source, health.version, cause="alias" if alias else "store_version"
        )
        return HealthResult.ROTATION_PENDING, f"new key version {health.version}"
    if health.material and _material_rotated(source, health.version, health.material):
        tenant_mark_rotation_pending(tenant, source, health.version, cause="material")
        return HealthResult.ROTATION_PENDING, f"new key material in {health.version}"
    return HealthResult.OK, ""


def _note(tenant: Tenant, source: KeySource, result: str, message: str) -> None:
    """Keep the finding: the same as the last one moves its time, anything else is a new row."""
    now = timezone.now()
    with transaction.atomic():
        last = (
            KeyHealthCheck.objects.select_for_update()
            .filter(tenant=tenant)
            .order_by("-last_at")
            .first()
        )
        if last is not None and (last.source_id, last.result, last.message) == (
            source.pk,
            result,
            message,
        ):
            KeyHealthCheck.objects.filter(pk=last.pk).update(last_at=now, runs=F("runs") + 1)
            return
        KeyHealthCheck.objects.create(
            tenant=tenant, source=source, result=result, message=message, first_at=now, last_at=now
        )


@transaction.atomic
def key_health_check_request(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> None:
    """Check the tenant's key now rather than at the next beat (a support action)."""
    tenant = Tenant.objects.get(pk=tenant.pk)
    if tenant.state not in CHECKED_STATES + WATCHED_STATES:
        raise KeyActionRefused(
            f"{tenant.name} is {tenant.get_state_display().lower()}: there is no customer key "
            "to check."
        )
    record(tenant=tenant, actor=actor, action="key.health_check_requested", request=request)
    tenant_id = str(tenant.pk)
    transaction.on_commit(
        lambda: current_app.send_task(CHECK_TENANT_KEY_HEALTH_TASK, args=[tenant_id])
    )


@transaction.atomic
def rotation_remind(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> int:
    """Email the owners and key administrators about the rotation waiting for them.

    Returns how many were written to (0 is refused: nobody would be reminded).
    """
    tenant = Tenant.objects.get(pk=tenant.pk)
    if tenant.state != ServiceState.ROTATION_PENDING:
        raise KeyActionRefused(f"{tenant.name} has no key rotation waiting for a confirmation.")
    recipients = key_admin_emails(tenant)
    if not recipients:
        raise KeyActionRefused(f"{tenant.name} has no owner or key administrator with an email.")
    record(
        tenant=tenant,
        actor=actor,
        action="key.rotation_reminder",
        details={"recipients": len(recipients)},
        request=request,
    )
    since = tenant.state_changed_at
    notify_key_admins(
        tenant,
        "a key rotation is waiting for your confirmation",
        f"Since {since:%Y-%m-%d %H:%M} UTC, {tenant.name}'s service has been paused: a new "
        "version of your key is waiting for an owner or key administrator to review and "
        "confirm it (Keys, Review the new key version). New data is held until then.\n\n"
        "Keyward's support team sent this reminder.\n",
    )
    return len(recipients)


def _material_rotated(source: KeySource, version: str, material: str) -> bool:
    """New key material in the same key: the first marker is recorded, a later change flags."""
    row = KekVersion.objects.filter(source=source, provider_version=version).first()
    if row is None:
        return False
    if not row.material_marker:
        KekVersion.objects.filter(pk=row.pk).update(material_marker=material)
        return False
    return material != row.material_marker
