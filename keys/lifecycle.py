"""Tenant key-state transitions the key store drives, each explicit and audited.

The health check calls `key_health_check`; it never revokes on a timeout:
an unreachable key store makes the tenant `degraded` (cached keys keep
serving until their TTL), and only an explicit denial (disabled, pending
deletion, access denied) makes it `revoked`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.consumers import (
    TO_DEDICATED,
    TO_SHARED,
    data_move_begin,
    data_move_next,
    rewrap_other_keys,
    shred_other_keys,
)
from keys.models import DataKey, DekState, KekState, KekVersion, KeySource, SourceKind, SourceState
from keys.notify import notify_key_admins
from keys.providers.base import CheckResult, KeyAccessDenied, KeyUnavailable
from keys.registry import provider_for
from keys.runtime import envelope
from keys.services import dek_rotate_for_move, rewrap_one
from keys.sources import byok_enable_finish
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
    reason: str = "the key in your key store changed; confirm the new version",
) -> bool:
    """The key changed (in the customer's store, or uploaded by `actor`): pause the tenant."""
    with transaction.atomic():
        pending, _ = KekVersion.objects.get_or_create(
            source=source, provider_version=version, defaults={"state": KekState.PENDING}
        )
        moved = tenant_transition(
            tenant=tenant,
            to=ServiceState.ROTATION_PENDING,
            actor=actor,
            action="key.rotation_detected",
            reason=reason,
            details={"new_version": version, "kek_version": str(pending.pk)},
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


# -- decisions of the tenant's administrators ------------------------------------------


class LifecycleRefused(Exception):
    """A lifecycle action the tenant's state or key store does not allow now."""


REWRAPPABLE = (ServiceState.BYOK_ACTIVE, ServiceState.REWRAPPING)


def pending_version(source: KeySource) -> KekVersion | None:
    return source.versions.filter(state=KekState.PENDING).order_by("-created").first()


def active_customer_source(tenant: Tenant) -> KeySource:
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    if source is None:
        raise LifecycleRefused("This tenant does not use a key of its own.")
    return source


def _require_checks(
    tenant: Tenant,
    source: KeySource,
    actor: Actor,
    action: str,
    request: HttpRequest | None,
    *,
    refusal: str,
) -> list[CheckResult]:
    """Run the source's checks; on a failure record it and refuse with what failed."""
    context = {"keyward:tenant": str(tenant.pk), "keyward:purpose": "test"}
    results = provider_for(source).run_checks(context)
    failed = [r for r in results if r.required and not r.passed]
    if failed:
        reason = "; ".join(f"{r.name}: {r.message}" for r in failed)
        record(
            tenant=tenant,
            actor=actor,
            action=action,
            outcome=Outcome.FAILURE,
            reason=reason,
            request=request,
        )
        raise LifecycleRefused(f"{refusal}: {reason}")
    return results


def kek_confirm_rotation(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> str:
    """Confirm a detected rotation: check the new version, then rewrap under it.

    1. Only from rotation_pending; confirming again is a no-op with a message.
    2. The provider's checks run against the new version outside any lock; a
       key store that cannot be reached refuses, and the tenant stays paused.
    3. The source now points at the new version, the tenant is `rewrapping`, and
       the task rewraps every DEK (see `kek_rewrap_run`).
    """
    from keys.tasks import run_kek_rewrap

    current = Tenant.objects.get(pk=tenant.pk)
    if current.state in REWRAPPABLE:
        return "This rotation was confirmed already; nothing to do."
    if current.state != ServiceState.ROTATION_PENDING:
        raise LifecycleRefused(
            f"There is no rotation to confirm: the tenant is {current.get_state_display()}."
        )
    source = active_customer_source(current)
    pending = pending_version(source)
    if pending is None:
        raise LifecycleRefused("No new key version is waiting for confirmation.")
    config = _config_for(source, pending)
    probe = KeySource(
        pk=source.pk,
        tenant=current,
        kind=source.kind,
        config=config,
        sealed_credentials=source.sealed_credentials,
        sealed_credentials_root=source.sealed_credentials_root,
    )
    results = _require_checks(
        current, probe, actor, "kek.confirm_rotation", request,
        refusal="The new key version did not pass its checks",
    )  # fmt: skip
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=current.pk)
        if locked.state != ServiceState.ROTATION_PENDING:  # another administrator was faster
            return f"The tenant is {locked.get_state_display()} now; nothing to do."
        KeySource.objects.filter(pk=source.pk).update(config=config)
        tenant_transition(
            tenant=locked,
            to=ServiceState.REWRAPPING,
            actor=actor,
            action="kek.confirm_rotation",
            target=pending.provider_version,
            details={"checks": {r.name: r.passed for r in results}},
            request=request,
        )
        transaction.on_commit(lambda: run_kek_rewrap.delay(str(source.pk)))
    return "Confirmed: your data keys are being rewrapped under the new version."


def _config_for(source: KeySource, pending: KekVersion) -> dict[str, object]:
    """The source's configuration with the pending version as the one new wraps use."""
    config = dict(source.config)
    if source.kind == SourceKind.UPLOADED and config.get("store") != "aws_kms":
        config["version"] = pending.provider_version
        config["check_value"] = pending.check_value
    elif config.get("store") == "aws_kms":
        config["key_arn"] = pending.provider_version
    else:  # AWS KMS by alias: the alias resolves to the new key by itself
        config.update(provider_for(source).pin_version(pending.provider_version))
    return config


def kek_reject_rotation(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> str:
    """ "This rotation was not ours": stay paused, record it, say what to check."""
    current = Tenant.objects.get(pk=tenant.pk)
    if current.state != ServiceState.ROTATION_PENDING:
        raise LifecycleRefused("There is no rotation waiting for a decision.")
    record(
        tenant=current,
        actor=actor,
        action="kek.reject_rotation",
        outcome=Outcome.DENIED,
        reason="an administrator says this rotation was not theirs",
        request=request,
    )
    return (
        "Recorded. The service stays paused. Check your key store's own audit log (for AWS, "
        "CloudTrail events UpdateAlias, RotateKeyOnDemand and ImportKeyMaterial) for who "
        "changed the key, and revoke if you did not expect it."
    )


def kek_rewrap_run(*, source_id: str) -> str:
    """Rewrap every live DEK under the source's current version, then resume. Idempotent.

    One DEK per transaction; before each, the tenant must still be `rewrapping`:
    a revoke meanwhile stops the job cleanly (every DEK is under exactly one
    version at every moment, old or new, and both still unwrap).
    """
    source = KeySource.objects.select_related("tenant").get(pk=source_id)
    tenant = source.tenant
    provider = provider_for(source)
    target = provider.current_version()
    live = DataKey.objects.filter(tenant=tenant).exclude(
        state__in=[DekState.RETIRED, DekState.DESTROYED]
    )
    for dek_id in list(
        live.exclude(kek_version__provider_version=target).values_list("pk", flat=True)
    ):
        if not rewrap_one(
            tenant=tenant,
            dek_id=dek_id,
            target=source,
            wrapper=provider,
            while_state=ServiceState.REWRAPPING,
        ):
            return "stopped"
    if not rewrap_other_keys(
        tenant=tenant,
        target=source,
        wrapper=provider,
        while_state=ServiceState.REWRAPPING,
        version=target,
    ):
        return "stopped"
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state != ServiceState.REWRAPPING:
            return "stopped"
        in_use = set(live.values_list("kek_version_id", flat=True))
        # Versions nothing depends on any more retire: this source's older ones,
        # and those of a source this tenant switched away from.
        KekVersion.objects.filter(
            source__tenant=locked, state__in=[KekState.ACTIVE, KekState.PENDING]
        ).exclude(pk__in=in_use).update(state=KekState.RETIRED)
        KekVersion.objects.filter(pk__in=in_use).update(
            state=KekState.ACTIVE, validated_at=timezone.now(), material_marker=""
        )
        tenant_transition(
            tenant=locked,
            to=ServiceState.BYOK_ACTIVE,
            actor=Actor.system("rewrap"),
            action="kek.rotation_done",
            target=target,
            details={"data_keys": live.count()},
        )
    return "done"


def tenant_revoke(
    *, tenant: Tenant, actor: Actor, confirm: str, request: HttpRequest | None = None
) -> None:
    """Cut Keyward off the tenant's data now, and destroy Keyward's copies of uploaded keys."""
    if confirm.strip() != tenant.slug:
        raise LifecycleRefused(f"Type the tenant's identifier, {tenant.slug}, to confirm.")
    source = active_customer_source(tenant)
    moved = tenant_transition(
        tenant=tenant,
        to=ServiceState.REVOKED,
        actor=actor,
        action="key.revoke",
        reason=f"revoked by {actor.display}",
        request=request,
    )
    if moved is None:
        raise LifecycleRefused("The key cannot be revoked in the tenant's current state.")
    destroyed = _destroy_uploaded_copies(source)
    if destroyed:
        record(
            tenant=tenant,
            actor=actor,
            action="key.copy_destroyed",
            details={"versions": destroyed},
            request=request,
        )


def _destroy_uploaded_copies(source: KeySource) -> list[str]:
    if source.kind != SourceKind.UPLOADED:
        return []
    versions = list(source.versions.all())
    if source.config.get("store") == "aws_kms":
        from keys.aws_vendor import VendorKmsError, delete_imported_material

        for version in versions:
            try:
                delete_imported_material(version.provider_version)
            except VendorKmsError:
                # Already gone (or unreachable: the key stays revoked either way).
                continue
    else:
        KekVersion.objects.filter(source=source).update(material=None)
    return [v.provider_version for v in versions]


def tenant_restore(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> None:
    """Resume after a revoke once the key works again: its checks must pass."""
    current = Tenant.objects.get(pk=tenant.pk)
    if current.state != ServiceState.REVOKED:
        raise LifecycleRefused(
            f"Only a revoked tenant can be restored; this one is {current.get_state_display()}."
        )
    source = active_customer_source(current)
    _require_checks(
        current, source, actor, "key.restore", request, refusal="The key is not usable yet"
    )
    if (
        tenant_transition(
            tenant=current,
            to=ServiceState.BYOK_ACTIVE,
            actor=actor,
            action="key.restore",
            reason=f"restored by {actor.display}; checks passed",
            request=request,
            only_from=(ServiceState.REVOKED,),
        )
        is None
    ):
        raise LifecycleRefused("The tenant changed state meanwhile; look again.")


# -- destroy (crypto-shredding) and remove BYOK -----------------------------------------


def tenant_schedule_destroy(
    *, tenant: Tenant, actor: Actor, typed_name: str, request: HttpRequest | None = None
) -> datetime:
    """Owner, from revoked, with the tenant's name typed: destroy after the waiting period."""
    if typed_name.strip() != tenant.name:
        raise LifecycleRefused(f"Type the tenant's name, {tenant.name}, to confirm.")
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state != ServiceState.REVOKED:
            raise LifecycleRefused("Keys can be destroyed only after they were revoked.")
        if locked.destroy_after is not None:
            return locked.destroy_after
        when = timezone.now() + timedelta(days=settings.KEYWARD_DESTROY_WAIT_DAYS)
        Tenant.objects.filter(pk=locked.pk).update(destroy_after=when)
        record(
            tenant=locked,
            actor=actor,
            action="key.destroy_scheduled",
            details={"destroy_after": when.isoformat()},
            request=request,
        )
        notify_key_admins(
            locked,
            "key destruction scheduled",
            f"An owner scheduled the destruction of {locked.name}'s keys for "
            f"{when:%Y-%m-%d %H:%M} UTC. After that, the tenant's data can never be read "
            "again. An owner can cancel it until then (Keys page).\n",
        )
    return when


def tenant_cancel_destroy(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> None:
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.destroy_after is None or locked.state == ServiceState.DESTROYED:
            raise LifecycleRefused("There is no scheduled destruction to cancel.")
        Tenant.objects.filter(pk=locked.pk).update(destroy_after=None)
        record(tenant=locked, actor=actor, action="key.destroy_cancelled", request=request)


def tenant_destroy_due(*, tenant_id: str) -> bool:
    """Crypto-shred a tenant whose waiting period ended. Idempotent; the audit trail stays."""
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant_id)
        if (
            locked.state != ServiceState.REVOKED
            or locked.destroy_after is None
            or locked.destroy_after > timezone.now()
        ):
            return False
        deks = DataKey.objects.filter(tenant=locked)
        count = deks.count()
        deks.update(wrapped=b"", state=DekState.DESTROYED, retired_at=timezone.now())
        sources = list(KeySource.objects.filter(tenant=locked))
        for source in sources:
            _destroy_uploaded_copies(source)
        KekVersion.objects.filter(source__in=sources).update(material=None, state=KekState.REVOKED)
        # The customer's key-store credentials have no use left: gone with the keys.
        KeySource.objects.filter(pk__in=[s.pk for s in sources]).update(
            sealed_credentials=None, sealed_credentials_root=""
        )
        other_keys = shred_other_keys(locked)
        tenant_transition(
            tenant=locked,
            to=ServiceState.DESTROYED,
            actor=Actor.system("crypto-shredding"),
            action="key.destroyed",
            reason="the waiting period ended; every wrapped data key was deleted",
            details={"data_keys": count, "other_keys": other_keys},
        )
    return True


def tenant_remove_byok(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> None:
    """Owner: go back to the vendor-managed key. A task rewraps (`byok_remove_run`)."""
    from keys.tasks import run_byok_remove

    active_customer_source(tenant)
    if (
        tenant_transition(
            tenant=tenant,
            to=ServiceState.MIGRATING_BACK,
            actor=actor,
            action="byok.remove",
            reason=f"requested by {actor.display}",
            request=request,
        )
        is None
    ):
        raise LifecycleRefused("Your key can be removed only while it is in normal use.")
    transaction.on_commit(lambda: run_byok_remove.delay(str(tenant.pk)))


def byok_remove_run(*, tenant_id: str) -> str:
    """Rewrap every live DEK under the vendor-managed key, switch, move the objects back.

    Idempotent, and the mirror of `byok_enable_run`: a tenant with objects in its
    dedicated location stays `migrating_back` until they are in shared storage
    under a new vendor-managed DEK (objects/moves.py), then `byok_remove_finish`.
    """
    tenant = Tenant.objects.get(pk=tenant_id)
    if tenant.state != ServiceState.MIGRATING_BACK:
        return "skipped"
    local = (
        KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).order_by("-created").first()
    )
    if local is not None and local.state == SourceState.ACTIVE:  # switched: data moving
        answer = data_move_next(tenant, TO_SHARED)
        if answer == "done":
            byok_remove_finish(tenant)
        return answer
    if local is None:
        local = KeySource.objects.create(
            tenant=tenant, kind=SourceKind.LOCAL, state=SourceState.RETIRED
        )
    vendor = provider_for(local)
    live = DataKey.objects.filter(tenant=tenant, state__in=[DekState.ACTIVE, DekState.RETIRING])
    for dek_id in list(live.exclude(kek_version__source=local).values_list("pk", flat=True)):
        if not rewrap_one(
            tenant=tenant,
            dek_id=dek_id,
            target=local,
            wrapper=vendor,
            while_state=ServiceState.MIGRATING_BACK,
        ):
            return "stopped"
    if not rewrap_other_keys(
        tenant=tenant, target=local, wrapper=vendor, while_state=ServiceState.MIGRATING_BACK
    ):
        return "stopped"
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state != ServiceState.MIGRATING_BACK:
            return "stopped"
        customer = KeySource.objects.filter(tenant=locked, state=SourceState.ACTIVE).exclude(
            pk=local.pk
        )
        KekVersion.objects.filter(source__in=customer).update(state=KekState.RETIRED)
        customer.update(state=SourceState.RETIRED)
        KeySource.objects.filter(pk=local.pk).update(state=SourceState.ACTIVE)
        local.state = SourceState.ACTIVE
        record(
            tenant=locked,
            actor=Actor.system("remove byok"),
            action="byok.keys_moved_back",
            details={"data_keys": live.count()},
        )
        vendor_local = local
        if data_move_begin(
            tenant=locked,
            source=local,
            direction=TO_SHARED,
            new_dek=lambda: dek_rotate_for_move(
                tenant=locked, source=vendor_local, reason="objects move to shared"
            ),
        ):
            return "moving"
        byok_remove_finish(locked)
    envelope().forget(str(tenant.pk))
    return "done"


def byok_remove_finish(tenant: Tenant) -> bool:
    """The last step of removing BYOK: vendor-managed again. Idempotent; True if it moved."""
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state != ServiceState.MIGRATING_BACK:
            return False
        tenant_transition(
            tenant=locked,
            to=ServiceState.VENDOR_MANAGED,
            actor=Actor.system("remove byok"),
            action="byok.removed",
        )
    return True


def kek_rotate_now(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> str:
    """Forced rotation in the customer's key store, where it can do it.

    AWS on demand: the key stays the same key, so nothing is rewrapped; the new
    material's marker is recorded so the health check does not pause for our
    own rotation. KMIP: a new key is made on the server and becomes a pending
    version, confirmed and rewrapped like any detected rotation.
    """
    current = Tenant.objects.get(pk=tenant.pk)
    if current.state != ServiceState.BYOK_ACTIVE:
        raise LifecycleRefused("The key can be rotated only while it is in normal use.")
    source = active_customer_source(current)
    provider = provider_for(source)
    if not provider.can_rotate_now:
        raise LifecycleRefused("This key rotates by uploading a new key; use the upload page.")
    try:
        new_key = provider.rotate_now()
        health = None if new_key else provider.health()
    except (KeyUnavailable, KeyAccessDenied) as exc:
        record(
            tenant=current,
            actor=actor,
            action="kek.rotate_now",
            outcome=Outcome.FAILURE,
            reason=str(exc),
            request=request,
        )
        raise LifecycleRefused(f"The key store refused the rotation: {exc}") from None
    if health is None:
        # A new key (KMIP): data keys move under it after the usual confirmation.
        record(
            tenant=current,
            actor=actor,
            action="kek.rotate_now",
            target=str(new_key),
            details={"new_key": str(new_key)},
            request=request,
        )
        tenant_mark_rotation_pending(
            current,
            source,
            str(new_key),
            actor=actor,
            reason="a new key was made in your key store on request; confirm it",
        )
        return (
            "A new key was made in your key store. Review and confirm it to rewrap your "
            "data keys under it; until then the service is paused."
        )
    KekVersion.objects.filter(source=source, provider_version=health.version).update(
        material_marker=health.material
    )
    record(
        tenant=current,
        actor=actor,
        action="kek.rotate_now",
        target=health.version,
        details={"material": health.material},
        request=request,
    )
    return "New key material was made in your key store; older data keeps decrypting."


def kek_switch_source(
    *, tenant: Tenant, source: KeySource, actor: Actor, request: HttpRequest | None = None
) -> str:
    """Forced rotation to another key of the same kind (a new AWS key ARN).

    The tested registration becomes the active source at once (so a resumed
    job or the health check can only ever follow the new key); the data keys
    then move under it like after a confirmed rotation (`kek_rewrap_run`).
    """
    from keys.tasks import run_kek_rewrap

    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        source = KeySource.objects.select_for_update().get(pk=source.pk, tenant=locked)
        if locked.state != ServiceState.BYOK_ACTIVE:
            raise LifecycleRefused("Switch keys while the current one is in normal use.")
        if source.state == SourceState.ACTIVE:
            return "This key is the one in use already."
        if not source.test_passed:
            raise LifecycleRefused("Run Save and Test with these settings first.")
        old = KeySource.objects.filter(tenant=locked, state=SourceState.ACTIVE)
        old_ids = [str(pk) for pk in old.values_list("pk", flat=True)]
        old.update(state=SourceState.RETIRED)
        KeySource.objects.filter(pk=source.pk).update(state=SourceState.ACTIVE)
        tenant_transition(
            tenant=locked,
            to=ServiceState.REWRAPPING,
            actor=actor,
            action="kek.switch_source",
            target=str(source.config.get("key_arn", source.kind)),
            details={"from_sources": old_ids, "to_source": str(source.pk)},
            request=request,
        )
        transaction.on_commit(lambda: run_kek_rewrap.delay(str(source.pk)))
    return "Switching to the new key: your data keys are being rewrapped under it."


def data_move_finished(*, tenant_id: str, direction: str, succeeded: bool) -> bool:
    """A data consumer's move ended: the tenant may reach the state its key move
    was heading for. Idempotent; a failed move keeps the tenant paused (the
    consumer audited and alerted). True when the tenant moved."""
    if not succeeded:
        return False
    tenant = Tenant.objects.get(pk=tenant_id)
    if data_move_next(tenant, direction) != "done":
        return False  # another consumer's data still moves
    if direction == TO_DEDICATED:
        return byok_enable_finish(tenant)
    return byok_remove_finish(tenant)
