"""A new key version: confirm or reject it, rewrap under it, rotate now, switch keys."""

from __future__ import annotations

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.consumers import rewrap_other_keys
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
from keys.providers.base import (
    CheckResult,
    KeyAccessDenied,
    KeyUnavailable,
)
from keys.registry import provider_for
from keys.selectors.sources import (
    active_customer_source,
    pending_version,
)
from keys.services.deks import rewrap_many
from keys.services.health import tenant_mark_rotation_pending
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition

# Celery task names (tasks.py registers them under these): enqueued by name, so
# this module need not import the tasks that call it.
RUN_KEK_REWRAP_TASK = "keys.run_kek_rewrap"


REWRAPPABLE = (ServiceState.BYOK_ACTIVE, ServiceState.REWRAPPING)


def checks_summary(results: list[CheckResult]) -> dict[str, bool]:
    """Which named checks passed: the details of the event of the action they allowed."""
    return {r.name: r.passed for r in results}


def require_checks(tenant: Tenant, source: KeySource, *, refusal: str) -> list[CheckResult]:
    """Run the source's checks; refuse with what failed (the caller's view records it)."""
    context = {"keyward:tenant": str(tenant.pk), "keyward:purpose": "test"}
    results = provider_for(source).run_checks(context)
    failed = [r for r in results if r.required and not r.passed]
    if failed:
        reason = "; ".join(f"{r.name}: {r.message}" for r in failed)
        raise KeyActionRefused(f"{refusal}: {reason}", details={"checks": checks_summary(results)})
    return results


def kek_confirm_rotation(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> str:
    """Confirm a detected rotation: check the new version, then rewrap under it.

    1. Only from rotation_pending; confirming again is a no-op with a message
       (recorded: each click is one event).
    2. The provider's checks run against the new version outside any lock; a
       key store that cannot be reached refuses, and the tenant stays paused.
    3. The source now points at the new version, the tenant is `rewrapping`, and
       the task rewraps every DEK (see `kek_rewrap_run`).
    """
    current = Tenant.objects.get(pk=tenant.pk)
    if current.state in REWRAPPABLE:
        return _nothing_to_do(
            current, actor, request, "This rotation was confirmed already; nothing to do."
        )
    if current.state != ServiceState.ROTATION_PENDING:
        raise KeyActionRefused(
            f"There is no rotation to confirm: the tenant is {current.get_state_display()}."
        )
    source = active_customer_source(current)
    pending = pending_version(source)
    if pending is None:
        raise KeyActionRefused("No new key version is waiting for confirmation.")
    config = _config_for(source, pending)
    probe = KeySource(
        pk=source.pk,
        tenant=current,
        kind=source.kind,
        config=config,
        sealed_credentials=source.sealed_credentials,
        sealed_credentials_root=source.sealed_credentials_root,
    )
    results = require_checks(current, probe, refusal="The new key version did not pass its checks")
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=current.pk)
        if locked.state != ServiceState.ROTATION_PENDING:  # another administrator was faster
            return _nothing_to_do(
                locked,
                actor,
                request,
                f"The tenant is {locked.get_state_display()} now; nothing to do.",
            )
        KeySource.objects.filter(pk=source.pk).update(config=config)
        tenant_transition(
            tenant=locked,
            to=ServiceState.REWRAPPING,
            actor=actor,
            action="kek.confirm_rotation",
            target=pending.provider_version,
            details={"checks": checks_summary(results)},
            request=request,
        )
        transaction.on_commit(
            lambda: current_app.send_task(RUN_KEK_REWRAP_TASK, args=[str(source.pk)])
        )
    return "Confirmed: your data keys are being rewrapped under the new version."


def _nothing_to_do(tenant: Tenant, actor: Actor, request: HttpRequest | None, answer: str) -> str:
    """A confirmation that changes nothing (a second click) is still the click's one event."""
    record(
        tenant=tenant, actor=actor, action="kek.confirm_rotation", reason=answer, request=request
    )
    return answer


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
        raise KeyActionRefused("There is no rotation waiting for a decision.")
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

    Batches of DEKs (`rewrap_many`), the key store called with no lock held and
    each batch written in one transaction; before each, the tenant must still be
    `rewrapping`: a revoke meanwhile stops the job cleanly (every DEK is under
    exactly one version at every moment, old or new, and both still unwrap).
    Only DEKs are read and written: the data under them is never touched, so
    the job takes as long with a million records as with none.

    The calls overlap, KEYWARD_KEK_REWRAP_CONCURRENCY at most: each DEK is one
    round trip (AWS KMS ReEncrypt) or two (unwrap, wrap) that mostly wait on the
    network. The bound is
    the customer's: their key store's request quota (AWS KMS: a few thousand
    cryptographic calls per second, per account and region, shared with
    everything else they run) must not be spent by one tenant's rotation, and
    a rotation that throttles the customer's own applications is an outage.
    """
    source = KeySource.objects.select_related("tenant").get(pk=source_id)
    tenant = source.tenant
    provider = provider_for(source)
    target = provider.current_version()
    live = DataKey.objects.filter(tenant=tenant).exclude(
        state__in=[DekState.RETIRED, DekState.DESTROYED]
    )
    if not rewrap_many(
        tenant=tenant,
        dek_ids=list(
            live.exclude(kek_version__provider_version=target)
            .order_by("pk")
            .values_list("pk", flat=True)
        ),
        target=source,
        wrapper=provider,
        while_state=ServiceState.REWRAPPING,
        concurrency=settings.KEYWARD_KEK_REWRAP_CONCURRENCY,
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


def kek_rotate_now(*, tenant: Tenant, actor: Actor, request: HttpRequest | None = None) -> str:
    """Forced rotation in the customer's key store, where it can do it.

    AWS on demand: the key stays the same key, so nothing is rewrapped; the new
    material's marker is recorded so the health check does not pause for our
    own rotation. KMIP: a new key is made on the server and becomes a pending
    version, confirmed and rewrapped like any detected rotation.
    """
    current = Tenant.objects.get(pk=tenant.pk)
    if current.state != ServiceState.BYOK_ACTIVE:
        raise KeyActionRefused("The key can be rotated only while it is in normal use.")
    source = active_customer_source(current)
    provider = provider_for(source)
    if not provider.can_rotate_now:
        raise KeyActionRefused("This key rotates by uploading a new key; use the upload page.")
    try:
        new_key = provider.rotate_now()
        health = None if new_key else provider.health()
    except (KeyUnavailable, KeyAccessDenied) as exc:
        raise KeyActionRefused(f"The key store refused the rotation: {exc}") from None
    if health is None:
        # A new key (KMIP): data keys move under it after the usual confirmation.
        # The pause it causes is this click's one event.
        paused = tenant_mark_rotation_pending(
            current,
            source,
            str(new_key),
            actor=actor,
            action="kek.rotate_now",
            reason="a new key was made in your key store on request; confirm it",
            request=request,
            cause="on_request",
        )
        if not paused:  # the tenant changed state meanwhile: the new key waits
            record(
                tenant=current,
                actor=actor,
                action="kek.rotate_now",
                target=str(new_key),
                details={"new_version": str(new_key)},
                request=request,
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
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        source = KeySource.objects.select_for_update().get(pk=source.pk, tenant=locked)
        if locked.state != ServiceState.BYOK_ACTIVE:
            raise KeyActionRefused("Switch keys while the current one is in normal use.")
        if source.state == SourceState.ACTIVE:
            record(
                tenant=locked,
                actor=actor,
                action="kek.switch_source",
                target=str(source.config.get("key_arn", source.kind)),
                reason="nothing changed: this key is the one in use already",
                request=request,
            )
            return "This key is the one in use already."
        if not source.test_passed:
            raise KeyActionRefused("Run Save and Test with these settings first.")
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
        transaction.on_commit(
            lambda: current_app.send_task(RUN_KEK_REWRAP_TASK, args=[str(source.pk)])
        )
    return "Switching to the new key: your data keys are being rewrapped under it."
