"""Tenant key-state transitions the key store drives, each explicit and audited.

The health check calls `key_health_check`; it never revokes on a timeout:
an unreachable key store makes the tenant `degraded` (cached keys keep
serving until their TTL), and only an explicit denial (disabled, pending
deletion, access denied) makes it `revoked`.
"""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest

from audit.models import Outcome
from audit.services import Actor
from keys.models import (
    DataKey,
    DekState,
    KekState,
    KekVersion,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.notify import notify_key_admins
from keys.providers.base import (
    KeyAccessDenied,
    KeyUnavailable,
)
from keys.registry import provider_for
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition

HEALTH = Actor.system("key health check")


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
    """Check one BYOK tenant's key; return what was found (for logs and tests)."""
    tenant = Tenant.objects.get(pk=tenant.pk)  # the state now, not when the caller loaded it
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    if source is None or tenant.state not in CHECKED_STATES + WATCHED_STATES:
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
    if tenant.state in WATCHED_STATES:
        return "ok"  # paused for a rotation: only a cut-off changes anything now
    tenant_mark_recovered(tenant)
    if health.version not in _in_use_versions(source):
        alias = ":alias/" in str(source.config.get("key_arn", ""))
        tenant_mark_rotation_pending(
            tenant, source, health.version, cause="alias" if alias else "store_version"
        )
        return "rotation_pending"
    if health.material and _material_rotated(source, health.version, health.material):
        tenant_mark_rotation_pending(tenant, source, health.version, cause="material")
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
