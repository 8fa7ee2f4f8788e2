"""Tenant key-state transitions the key store drives, each explicit and audited.

The health check calls `key_health_check`; it never revokes on a timeout:
an unreachable key store makes the tenant `degraded` (cached keys keep
serving until their TTL), and only an explicit denial (disabled, pending
deletion, access denied) makes it `revoked`.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.models import DataKey, DekState, KekState, KekVersion, KeySource, SourceKind, SourceState
from keys.providers.base import KeyAccessDenied, KeyUnavailable
from keys.registry import provider_for
from keys.runtime import envelope, publish_key_state
from tenants.models import ServiceState, Tenant

HEALTH = Actor.system("key health check")
CHECKED_STATES = (ServiceState.BYOK_ACTIVE, ServiceState.DEGRADED)


def _move(
    tenant: Tenant,
    *,
    to: str,
    allowed_from: tuple[str, ...],
    action: str,
    reason: str,
    outcome: str = Outcome.SUCCESS,
    bump_epoch: bool = False,
    details: dict[str, object] | None = None,
) -> bool:
    """Move the tenant if it is still in one of `allowed_from`; record why. True if moved."""
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state not in allowed_from:
            return False
        updates: dict[str, object] = {"state": to, "state_changed_at": timezone.now()}
        if bump_epoch:
            updates["key_epoch"] = F("key_epoch") + 1
        Tenant.objects.filter(pk=locked.pk).update(**updates)
        record(
            tenant=locked,
            actor=HEALTH,
            action=action,
            outcome=outcome,
            reason=reason,
            details={"from": locked.state, "to": to, **(details or {})},
        )
        publish_key_state(str(locked.pk))
    if bump_epoch:
        envelope().forget(str(tenant.pk))
    return True


def tenant_mark_degraded(tenant: Tenant, reason: str) -> bool:
    return _move(
        tenant,
        to=ServiceState.DEGRADED,
        allowed_from=(ServiceState.BYOK_ACTIVE,),
        action="key.degraded",
        outcome=Outcome.FAILURE,
        reason=reason,
    )


def tenant_mark_recovered(tenant: Tenant) -> bool:
    return _move(
        tenant,
        to=ServiceState.BYOK_ACTIVE,
        allowed_from=(ServiceState.DEGRADED,),
        action="key.recovered",
        reason="the key store answers again",
    )


def tenant_mark_revoked(tenant: Tenant, reason: str) -> bool:
    """The customer cut access: every process drops the tenant's DEKs within a second."""
    return _move(
        tenant,
        to=ServiceState.REVOKED,
        allowed_from=(
            ServiceState.BYOK_ACTIVE,
            ServiceState.DEGRADED,
            ServiceState.ROTATION_PENDING,
        ),
        action="key.revoked",
        outcome=Outcome.DENIED,
        reason=reason,
        bump_epoch=True,
    )


def tenant_mark_rotation_pending(tenant: Tenant, source: KeySource, version: str) -> bool:
    """The key changed in the customer's store: record the new version, pause the tenant."""
    with transaction.atomic():
        pending, _ = KekVersion.objects.get_or_create(
            source=source, provider_version=version, defaults={"state": KekState.PENDING}
        )
        return _move(
            tenant,
            to=ServiceState.ROTATION_PENDING,
            allowed_from=(ServiceState.BYOK_ACTIVE, ServiceState.DEGRADED),
            action="key.rotation_detected",
            reason="the key in your key store changed; confirm the new version",
            details={"new_version": version, "kek_version": str(pending.pk)},
        )


def _in_use_versions(source: KeySource) -> set[str]:
    return set(
        DataKey.objects.filter(kek_version__source=source)
        .exclude(state__in=[DekState.RETIRED, DekState.DESTROYED])
        .values_list("kek_version__provider_version", flat=True)
    )


def key_health_check(*, tenant: Tenant) -> str:
    """Check one BYOK tenant's key; return what was found (for logs and tests)."""
    tenant = Tenant.objects.get(pk=tenant.pk)  # the state now, not when the caller loaded it
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    if source is None or tenant.state not in CHECKED_STATES:
        return "skipped"
    try:
        health = provider_for(source).health()
    except KeyUnavailable as exc:
        tenant_mark_degraded(tenant, f"key store unreachable: {exc}")
        return "degraded"
    except KeyAccessDenied as exc:
        tenant_mark_revoked(tenant, f"access to the key was denied: {exc}")
        return "revoked"
    if not health.usable:
        tenant_mark_revoked(tenant, health.detail)
        return "revoked"
    tenant_mark_recovered(tenant)
    if health.version not in _in_use_versions(source):
        tenant_mark_rotation_pending(tenant, source, health.version)
        return "rotation_pending"
    if health.material and _material_rotated(source, health.version, health.material):
        tenant_mark_rotation_pending(tenant, source, health.version)
        return "rotation_pending"
    return "ok"


def _material_rotated(source: KeySource, version: str, material: str) -> bool:
    """New key material in the same key: the first marker is recorded, a later change flags."""
    row = KekVersion.objects.filter(source=source, provider_version=version).first()
    if row is None:
        return False
    if not row.material_marker:
        KekVersion.objects.filter(pk=row.pk).update(material_marker=material)
        return False
    return material != row.material_marker
