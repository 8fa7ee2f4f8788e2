"""Customer key sources: register, Save and Test, Enable. Each an audited transition.

Enable moves a vendor-managed tenant onto its own key: every DEK is rewrapped
under the customer's KEK (one DEK per transaction, so a crash or a retry
resumes where it stopped), the vendor-wrapped copy is overwritten in place,
and only then do the source and the tenant switch over.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import current_app
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.consumers import TO_DEDICATED, data_move_begin, data_move_next, rewrap_other_keys
from keys.credentials import CredentialsMissing, credentials_seal
from keys.errors import KeyActionRefused
from keys.models import (
    DataKey,
    KekState,
    KekVersion,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.providers.base import (
    KeyProviderError,
    KeyUnavailable,
    all_required_passed,
)
from keys.registry import provider_for
from keys.runtime import dek_context, envelope
from keys.selectors.sources import (
    LIVE_DEK_STATES,
    byok_enable_progress,
    draft_source,
)
from keys.services.addon import byok_addon_required
from keys.services.deks import dek_rotate_for_move, rewrap_one
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition

# The Celery task name (tasks.py registers it under this): enqueued by name.
RUN_BYOK_ENABLE_TASK = "keys.run_byok_enable"


@transaction.atomic
def key_source_register(
    *,
    tenant: Tenant,
    kind: str,
    config: dict[str, Any],
    actor: Actor,
    request: HttpRequest | None = None,
    credentials: dict[str, str] | None = None,
) -> KeySource:
    """Save a (validated) configuration. Any change invalidates the last test.

    `credentials` (secrets) are sealed under the vendor root key; None keeps
    the ones saved with this registration. Only the fact that they changed
    reaches the audit trail.
    """
    byok_addon_required(tenant)
    if Tenant.objects.get(pk=tenant.pk).is_paused:
        raise KeyActionRefused(
            "A key move is in progress; change the settings when it has finished."
        )
    source = draft_source(tenant, kind)
    if source is None:
        source = KeySource(tenant=tenant, kind=kind)
    previous = dict(source.config)
    if credentials is not None:
        source.config = dict(config)
        credentials_seal(source, credentials)
    else:
        source.config = dict(config)
        if "credentials_ref" in previous:
            source.config["credentials_ref"] = previous["credentials_ref"]
    config = source.config
    changed = previous != config
    if changed:
        source.state = SourceState.DRAFT
        source.test_results = []
        source.tested_at = None
        source.tested_config_digest = ""
    source.save()
    record(
        tenant=tenant,
        actor=actor,
        action="key_source.register",
        target=kind,
        details={
            "config": config,
            "changed": changed,
            "credentials_replaced": credentials is not None,
        },
        request=request,
    )
    return source


def key_source_test(
    *, source: KeySource, actor: Actor, request: HttpRequest | None = None
) -> KeySource:
    """Run the provider's named checks against the saved settings and keep the result.

    The checks talk to the customer's key store, so they run outside any
    transaction; only the result is written.
    """
    byok_addon_required(source.tenant)
    context = dek_context(str(source.tenant_id), 0) | {"keyward:purpose": "test"}
    tested_digest = source.config_digest()
    try:
        results = provider_for(source).run_checks(context)
    except KeyProviderError as exc:  # a provider should report, not raise; be safe anyway
        results = []
        failure = str(exc)
    else:
        failure = ""
    passed = all_required_passed(results)
    with transaction.atomic():
        locked = KeySource.objects.select_for_update().get(pk=source.pk)
        if locked.config_digest() != tested_digest:
            # Saved again while this test ran: its result is for settings gone now.
            return locked
        locked.test_results = [
            {"name": r.name, "passed": r.passed, "message": r.message, "required": r.required}
            for r in results
        ] or [{"name": "Key store", "passed": False, "message": failure, "required": True}]
        locked.tested_at = timezone.now()
        locked.tested_config_digest = tested_digest
        if locked.state in (SourceState.DRAFT, SourceState.TESTED):
            locked.state = SourceState.TESTED if passed else SourceState.DRAFT
        locked.save()
        record(
            tenant=locked.tenant,
            actor=actor,
            action="key_source.test",
            target=locked.kind,
            outcome=Outcome.SUCCESS if passed else Outcome.FAILURE,
            reason=""
            if passed
            else "; ".join(
                f"{r['name']}: {r['message']}" for r in locked.test_results if not r["passed"]
            ),
            details={"checks": {r["name"]: r["passed"] for r in locked.test_results}},
            request=request,
        )
    return locked


def byok_enable(
    *, tenant: Tenant, source: KeySource, actor: Actor, request: HttpRequest | None = None
) -> KeySource:
    """Start moving a vendor-managed tenant's DEKs under the customer's key.

    What the key store must make first (a KMIP server's key for the tenant, a
    pinned Key Vault version) is made before any lock is taken, then kept in
    the configuration together with the test's digest: the test covered the
    settings the customer saved, and this addition is ours.
    """
    _enable_refusal(Tenant.objects.get(pk=tenant.pk), source)
    try:
        prepared = provider_for(source).prepare_enable()
    except KeyProviderError as exc:
        raise KeyActionRefused(f"Your key store refused to prepare the key: {exc}") from None
    except (CredentialsMissing, ValueError) as exc:  # saved settings no longer usable
        raise KeyActionRefused(f"The saved settings cannot be used: {exc}") from None
    try:
        return _byok_enable_start(tenant, source, prepared, actor, request)
    except KeyActionRefused:
        # E.g. a second click: leave nothing behind in the customer's key store.
        with contextlib.suppress(KeyProviderError):
            provider_for(source).discard_prepared(prepared)
        raise


def _enable_refusal(tenant: Tenant, source: KeySource) -> None:
    byok_addon_required(tenant)
    if tenant.state != ServiceState.VENDOR_MANAGED:
        raise KeyActionRefused(
            f"Your key can be enabled only for a vendor-managed tenant; this one is "
            f"{tenant.get_state_display()}."
        )
    if source.state not in (SourceState.DRAFT, SourceState.TESTED):
        raise KeyActionRefused(
            f"This key registration is {source.get_state_display().lower()}: register the key "
            "again and test it."
        )
    if not source.test_passed:
        raise KeyActionRefused(
            "Run Save and Test with these settings first; Enable needs every check to pass."
        )


@transaction.atomic
def _byok_enable_start(
    tenant: Tenant,
    source: KeySource,
    prepared: dict[str, str],
    actor: Actor,
    request: HttpRequest | None,
) -> KeySource:
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    tested_digest = source.config_digest()
    source = KeySource.objects.select_for_update().get(pk=source.pk, tenant=locked)
    _enable_refusal(locked, source)
    if source.config_digest() != tested_digest:
        raise KeyActionRefused("The settings changed meanwhile; run Save and Test again.")
    if prepared:
        source.config = {**source.config, **prepared}
        source.tested_config_digest = source.config_digest()
        source.save(update_fields=["config", "tested_config_digest"])
    tenant_transition(
        tenant=locked,
        to=ServiceState.MIGRATING,
        actor=actor,
        action="byok.enable",
        target=source.kind,
        details={"source": str(source.pk), "config": source.config},
        request=request,
    )
    transaction.on_commit(
        lambda: current_app.send_task(RUN_BYOK_ENABLE_TASK, args=[str(source.pk)])
    )
    return source


def byok_enable_run(*, source_id: str) -> KeySource:
    """Rewrap every live DEK under the source, switch, move the objects. Idempotent.

    1. One DEK at a time (`rewrap_one`: key stores called with no lock held,
       the write checked under lock): unwrap with the key it is under, wrap
       with the customer's key, overwrite the wrapped bytes. A rerun skips
       DEKs already under the source.
    2. When none is left, in one transaction: the vendor source and its KEK
       versions are retired and the customer's source is active. A tenant
       with objects in shared storage stays `migrating` while they move to its
       dedicated location under a new DEK (objects/moves.py); otherwise, and when
       that move is done, `byok_enable_finish`.
    """
    source = KeySource.objects.select_related("tenant").get(pk=source_id)
    tenant = source.tenant
    if tenant.state != ServiceState.MIGRATING:
        return source
    if source.state == SourceState.ACTIVE:  # switched already: the data is moving
        if data_move_next(tenant, TO_DEDICATED) == "done":
            byok_enable_finish(tenant)
        return source
    provider = provider_for(source)
    pending = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES).exclude(
        kek_version__source=source
    )
    for dek_id in list(pending.values_list("pk", flat=True)):
        if not rewrap_one(
            tenant=tenant,
            dek_id=dek_id,
            target=source,
            wrapper=provider,
            while_state=ServiceState.MIGRATING,
        ):
            return source
    if not rewrap_other_keys(
        tenant=tenant, target=source, wrapper=provider, while_state=ServiceState.MIGRATING
    ):
        return source
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        source = KeySource.objects.select_for_update().get(pk=source.pk)
        if source.state == SourceState.ACTIVE or locked.state != ServiceState.MIGRATING:
            return source
        if pending.exists():  # a DEK appeared meanwhile: the next run moves it first
            raise KeyUnavailable("data keys are still to be moved; retrying")
        if not source.test_passed:
            raise KeyActionRefused("The key's settings changed during the move; test them again.")
        old_sources = KeySource.objects.filter(tenant=locked, state=SourceState.ACTIVE)
        KekVersion.objects.filter(source__in=old_sources).update(state=KekState.RETIRED)
        old_sources.update(state=SourceState.RETIRED)
        source.state = SourceState.ACTIVE
        source.save(update_fields=["state"])
        _, total = byok_enable_progress(locked, source)
        record(
            tenant=locked,
            actor=Actor.system("byok enable"),
            action="byok.keys_moved",
            target=source.kind,
            details={"data_keys": total, "vendor_copies_destroyed": total},
        )
        moving = data_move_begin(
            tenant=locked,
            source=source,
            direction=TO_DEDICATED,
            new_dek=lambda: dek_rotate_for_move(
                tenant=locked, source=source, reason="objects move to dedicated"
            ),
        )
        if not moving:
            byok_enable_finish(locked)
    envelope().forget(str(tenant.pk))
    return source


def byok_enable_finish(tenant: Tenant) -> bool:
    """The last step of Enable: the tenant is `byok_active`. Idempotent; True if it moved."""
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        source = KeySource.objects.filter(tenant=locked, state=SourceState.ACTIVE).first()
        if locked.state != ServiceState.MIGRATING:
            return False
        if source is None or source.kind == SourceKind.LOCAL:
            return False
        tenant_transition(
            tenant=locked,
            to=ServiceState.BYOK_ACTIVE,
            actor=Actor.system("byok enable"),
            action="byok.enabled",
            target=source.kind,
        )
    return True
