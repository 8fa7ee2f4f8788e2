"""Decisions of a tenant's administrators on its key: revoke, restore, destroy, remove BYOK."""

from __future__ import annotations

from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.services import Actor, record
from keys.aws_vendor import VendorKmsError, delete_imported_material
from keys.consumers import (
    TO_DEDICATED,
    TO_SHARED,
    data_move_begin,
    data_move_next,
    rewrap_other_keys,
    shred_other_keys,
)
from keys.errors import KeyActionRefused
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
from keys.registry import provider_for
from keys.runtime import envelope
from keys.selectors.sources import (
    active_customer_source,
)
from keys.services.deks import dek_rotate_for_move, rewrap_one
from keys.services.rotation import checks_summary, require_checks
from keys.services.sources import byok_enable_finish
from keys.services.uploads import key_imports_expire
from tenants.confirmation import confirmation_matches, confirmation_prompt
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition

# The Celery task name (tasks.py registers it under this): enqueued by name.
RUN_BYOK_REMOVE_TASK = "keys.run_byok_remove"


def require_confirmation(tenant: Tenant, confirm: str) -> None:
    """Refuse unless the tenant's identifier was typed (every typed confirmation)."""
    if not confirmation_matches(tenant, confirm):
        raise KeyActionRefused(confirmation_prompt(tenant))


def tenant_revoke(
    *, tenant: Tenant, actor: Actor, confirm: str, request: HttpRequest | None = None
) -> None:
    """Cut Keyward off the tenant's data now, and destroy Keyward's copies of uploaded keys.

    One event: the revoke, naming the copies destroyed with it.
    """
    require_confirmation(tenant, confirm)
    source = active_customer_source(tenant)
    copies = _uploaded_copies(source)
    moved = tenant_transition(
        tenant=tenant,
        to=ServiceState.REVOKED,
        actor=actor,
        action="key.revoke",
        reason=f"revoked by {actor.display}",
        details={"copies_destroyed": copies} if copies else None,
        request=request,
    )
    if moved is None:
        raise KeyActionRefused("The key cannot be revoked in the tenant's current state.")
    _destroy_uploaded_copies(source)


def _uploaded_copies(source: KeySource) -> list[str]:
    """The versions of which Keyward holds a copy of the customer's key (uploaded keys)."""
    if source.kind != SourceKind.UPLOADED:
        return []
    return list(source.versions.order_by("created").values_list("provider_version", flat=True))


def _destroy_uploaded_copies(source: KeySource) -> None:
    if source.kind != SourceKind.UPLOADED:
        return
    if source.config.get("store") == "aws_kms":
        for version in _uploaded_copies(source):
            try:
                delete_imported_material(version)
            except VendorKmsError:
                # Already gone (or unreachable: the key stays revoked either way).
                continue
    else:
        KekVersion.objects.filter(source=source).update(material=None)


def tenant_restore(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> None:
    """Resume after a revoke once the key works again: its checks must pass.

    The person's restore is the one event, the checks' results its details.
    """
    current = Tenant.objects.get(pk=tenant.pk)
    if current.state != ServiceState.REVOKED:
        raise KeyActionRefused(
            f"Only a revoked tenant can be restored; this one is {current.get_state_display()}."
        )
    source = active_customer_source(current)
    results = require_checks(current, source, refusal="The key is not usable yet")
    if (
        tenant_transition(
            tenant=current,
            to=ServiceState.BYOK_ACTIVE,
            actor=actor,
            action="key.restore",
            reason=f"restored by {actor.display}; checks passed",
            details={"checks": checks_summary(results)},
            request=request,
            only_from=(ServiceState.REVOKED,),
        )
        is None
    ):
        raise KeyActionRefused("The tenant changed state meanwhile; look again.")


def tenant_schedule_destroy(
    *, tenant: Tenant, actor: Actor, confirm: str, request: HttpRequest | None = None
) -> datetime:
    """Owner, from revoked, with the tenant's identifier typed: destroy after the waiting period."""
    require_confirmation(tenant, confirm)
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state != ServiceState.REVOKED:
            raise KeyActionRefused("Keys can be destroyed only after they were revoked.")
        if locked.destroy_after is not None:  # a second click: recorded, nothing changes
            record(
                tenant=locked,
                actor=actor,
                action="key.destroy_scheduled",
                reason="already scheduled; nothing changed",
                details={"destroy_after": locked.destroy_after.isoformat()},
                request=request,
            )
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
            raise KeyActionRefused("There is no scheduled destruction to cancel.")
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
        key_imports_expire(tenant=locked)
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
        raise KeyActionRefused("Your key can be removed only while it is in normal use.")
    transaction.on_commit(
        lambda: current_app.send_task(RUN_BYOK_REMOVE_TASK, args=[str(tenant.pk)])
    )


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
