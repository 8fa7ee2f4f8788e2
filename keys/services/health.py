"""Tenant key-state transitions the key store drives, each explicit and audited.

The health check calls `key_health_check`; it never revokes on a timeout:
an unreachable key store makes the tenant `degraded` (cached keys keep
serving until their TTL), and only an explicit denial (disabled, pending
deletion, access denied) makes it `revoked`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.credentials import CredentialsMissing, credentials_of
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
    KeyHealth,
    KeyProvider,
    KeyUnavailable,
)
from keys.registry import provider_for
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition

logger = logging.getLogger(__name__)

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


# -- the health round -----------------------------------------------------------------

# A round asks each distinct key at a random moment within its spread: a
# quarter of the beat interval at most (the rest is headroom: a round that
# overruns the interval sees revocations late), and no more than 10 ms per
# distinct key, so that a round of a few keys is not held back for nothing.
SPREAD_SHARE_OF_INTERVAL = 0.25
SPREAD_SECONDS_PER_KEY = 0.01
# Tenants whose answers are applied together (a few queries serve the batch),
# and the longest an answer waits for its batch: a revocation is acted on
# within a second of the key store saying so.
APPLY_BATCH = 200
APPLY_WITHIN_SECONDS = 1.0

Answer = KeyHealth | Exception


@dataclass
class _Key:
    """One distinct key of a round: the sources that reach it alike, and when to ask."""

    sources: list[KeySource]
    at: float = 0.0


@dataclass
class _Round:
    results: dict[str, str] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)


def key_health_check(*, tenant: Tenant) -> str:
    """Check one BYOK tenant's key now; return what was found (for logs and tests).

    The beat's round (`key_health_round`) for one tenant, with no spread. Each
    finding is kept (`KeyHealthCheck`) for the support console, with the key
    store's message; a check that raised is kept as an error, then re-raised.
    """
    current = Tenant.objects.filter(pk=tenant.pk)
    done = _run_round(current, spread=0.0, concurrency=1, rng=random.Random())
    if done.errors:
        raise done.errors[0]
    return next(iter(done.results.values()), "skipped")


def key_health_round(
    *,
    tenants: QuerySet[Tenant] | None = None,
    spread: float | None = None,
    rng: random.Random | None = None,
) -> dict[str, str]:
    """Check the key of every BYOK tenant (or of `tenants`); each tenant's slug and finding.

    1. The tenants in a checked or watched state are read with their active
       customer key source, at once; a tenant without one is skipped.
    2. Sources that reach the same key with the same identity (`_key_identity`)
       share one key-store call: at most one call per distinct key per round.
    3. Each distinct key is asked at a random moment within the round's spread
       (`_spread`), so the calls reach the key stores spread out rather than as
       one burst at the beat's tick; up to KEYWARD_HEALTH_CHECK_CONCURRENCY
       remote calls are in flight at once, in-process providers are asked here.
    4. Answers are applied as they arrive, a batch at a time: each tenant's
       state is read again then, and its own finding is decided from the shared
       answer (its state, its data keys' versions, its material marker),
       acted on (degraded, revoked, rotation pending) and kept.
    One key's failure never stops the rest: a check that raised is kept as an
    error for each tenant that shares the key, and logged once.
    """
    scope = Tenant.objects.all() if tenants is None else tenants
    done = _run_round(
        scope,
        spread=spread,
        concurrency=settings.KEYWARD_HEALTH_CHECK_CONCURRENCY,
        rng=rng or random.Random(),
    )
    return done.results


def _spread(keys: int) -> float:
    """Seconds over which a round of `keys` distinct keys spreads its calls (see above)."""
    longest = settings.KEYWARD_HEALTH_CHECK_SECONDS * SPREAD_SHARE_OF_INTERVAL
    return min(longest, keys * SPREAD_SECONDS_PER_KEY)


def _key_identity(source: KeySource) -> str:
    """Sources with equal identities get the same answer from the key store.

    An AWS KMS or Azure Key Vault provider is built from the source's kind,
    configuration and credentials alone (keys.registry): equal ones reach the
    same key as the same principal. A KMIP provider also takes the tenant's
    name and allowed networks, and an uploaded key is Keyward's own copy per
    source: those are asked per source. The credentials' digest lives in this
    round's memory only.
    """
    own = f"source:{source.pk}"
    if source.kind not in (SourceKind.AWS_KMS, SourceKind.AZURE_KEYVAULT) and not (
        source.kind == SourceKind.UPLOADED and source.config.get("store") == "aws_kms"
    ):
        return own
    secrets_digest = ""
    if source.sealed_credentials:
        try:
            secrets = credentials_of(source)
        except CredentialsMissing:
            return own  # the check fails the same way, per source
        canonical = json.dumps(secrets, sort_keys=True, separators=(",", ":"))
        secrets_digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{source.config_digest()}:{secrets_digest}"


def _run_round(
    tenants: QuerySet[Tenant], *, spread: float | None, concurrency: int, rng: random.Random
) -> _Round:
    done = _Round()
    checked = tenants.filter(state__in=CHECKED_STATES + WATCHED_STATES)
    sources = list(
        KeySource.objects.filter(tenant__in=checked, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .select_related("tenant")
        .order_by("tenant_id", "-created")
    )
    by_tenant: dict[object, KeySource] = {}
    for source in sources:
        by_tenant.setdefault(source.tenant_id, source)  # the newest, as `.first()` did
    for slug in checked.exclude(pk__in=list(by_tenant)).values_list("slug", flat=True):
        done.results[slug] = "skipped"
    groups: dict[str, _Key] = {}
    for source in by_tenant.values():
        groups.setdefault(_key_identity(source), _Key([])).sources.append(source)
    keys = list(groups.values())
    window = _spread(len(keys)) if spread is None else spread
    for key in keys:
        key.at = rng.uniform(0.0, window)
    keys.sort(key=lambda key: key.at)
    _ask_all(keys, concurrency, done)
    return done


def _ask_all(keys: list[_Key], concurrency: int, done: _Round) -> None:
    """Ask each key at its moment (remote ones from a bounded pool); apply answers in batches."""
    started = time.monotonic()
    waiting = deque(keys)
    asked: dict[Future[Answer], _Key] = {}
    answered: list[tuple[_Key, Answer]] = []
    oldest = started  # when the first of the answers not applied yet came
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="health") as pool:
        while waiting or asked:
            while waiting and waiting[0].at <= time.monotonic() - started:
                key = waiting.popleft()
                try:
                    provider = provider_for(key.sources[0])  # may read the database: here
                except Exception as exc:
                    answered.append((key, exc))
                    continue
                if getattr(provider, "remote", False):
                    asked[pool.submit(_ask, provider)] = key
                else:
                    answered.append((key, _ask(provider)))
            next_at = waiting[0].at - (time.monotonic() - started) if waiting else None
            pause = APPLY_WITHIN_SECONDS if next_at is None else min(next_at, APPLY_WITHIN_SECONDS)
            if asked:
                finished, _ = wait(asked, timeout=max(0.0, pause), return_when=FIRST_COMPLETED)
                for future in finished:
                    answered.append((asked.pop(future), future.result()))
            elif waiting and pause > 0:
                time.sleep(pause)
            tenants = sum(len(key.sources) for key, _ in answered)
            if answered and (
                tenants >= APPLY_BATCH
                or not (asked or waiting)
                or time.monotonic() - oldest > APPLY_WITHIN_SECONDS
            ):
                _apply(answered, done)
                answered = []
            if not answered:
                oldest = time.monotonic()
    if answered:
        _apply(answered, done)


def _ask(provider: KeyProvider) -> Answer:
    try:
        return provider.health()
    except Exception as exc:  # applied per tenant, as the finding
        return exc


@dataclass
class _Known:
    """What the batch's decisions read from the database, read once for the batch."""

    in_use: dict[object, set[str]]
    markers: dict[tuple[object, str], KekVersion]


def _apply(answered: list[tuple[_Key, Answer]], done: _Round) -> None:
    tenant_ids = [source.tenant_id for key, _ in answered for source in key.sources]
    active_source = Subquery(
        KeySource.objects.filter(tenant=OuterRef("pk"), state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .order_by("-created")
        .values("pk")[:1]
    )
    # The few columns the decisions read; a transition locks and reads the row again.
    fresh = {
        tenant.pk: tenant
        for tenant in Tenant.objects.filter(pk__in=tenant_ids)
        .only("id", "slug", "name", "state")
        .annotate(active_source=active_source, last_finding=_LATEST_FINDING)
    }
    source_ids = [source.pk for key, _ in answered for source in key.sources]
    known = _Known({}, {})
    for source_id, version in (
        DataKey.objects.filter(kek_version__source_id__in=source_ids)
        .exclude(state__in=[DekState.RETIRED, DekState.DESTROYED])
        .values_list("kek_version__source_id", "kek_version__provider_version")
        .distinct()
    ):
        known.in_use.setdefault(source_id, set()).add(version)
    with_material = [
        source.pk
        for key, answer in answered
        if isinstance(answer, KeyHealth) and answer.material
        for source in key.sources
    ]
    if with_material:
        for row in KekVersion.objects.filter(source_id__in=with_material).only(
            "id", "source_id", "provider_version", "material_marker"
        ):
            known.markers[(row.source_id, row.provider_version)] = row
    findings: list[tuple[Tenant, KeySource, str, str]] = []
    for key, answer in answered:
        unexpected = (
            answer
            if isinstance(answer, Exception)
            and not isinstance(answer, KeyUnavailable | KeyAccessDenied)
            else None
        )
        if unexpected is not None:
            logger.error(
                "health check of a key shared by %d tenants failed",
                len(key.sources),
                exc_info=unexpected,
            )
        for source in key.sources:
            tenant = fresh.get(source.tenant_id)
            if tenant is None:
                continue
            if (
                tenant.state not in CHECKED_STATES + WATCHED_STATES
                or tenant.active_source != source.pk
            ):
                done.results[tenant.slug] = "skipped"  # it changed meanwhile
                continue
            try:
                found, message = _decide(tenant, source, answer, known)
            except Exception as exc:
                found, message = HealthResult.ERROR, f"the check failed: {type(exc).__name__}"
                done.errors.append(exc)
                if exc is not unexpected:
                    logger.exception("health check of %s failed", tenant.slug)
                done.results[tenant.slug] = "error"
            else:
                done.results[tenant.slug] = found
            findings.append((tenant, source, found, message))
    _note_all(findings)


def _decide(tenant: Tenant, source: KeySource, answer: Answer, known: _Known) -> tuple[str, str]:
    """One tenant's finding from its key's answer, acted on (the check before the round was
    per tenant; the decision still is)."""
    if isinstance(answer, KeyUnavailable):
        reason = f"key store unreachable: {answer}"
        if tenant.state != ServiceState.DEGRADED:
            tenant_mark_degraded(tenant, reason)
        return HealthResult.DEGRADED, reason
    if isinstance(answer, KeyAccessDenied):
        reason = f"access to the key was denied: {answer}"
        tenant_mark_revoked(tenant, reason)
        return HealthResult.REVOKED, reason
    if not isinstance(answer, KeyHealth):
        raise answer
    if not answer.usable:
        tenant_mark_revoked(tenant, answer.detail)
        return HealthResult.REVOKED, answer.detail
    if tenant.state in WATCHED_STATES:
        return HealthResult.OK, ""  # paused for a rotation: only a cut-off changes anything now
    if tenant.state == ServiceState.DEGRADED:
        tenant_mark_recovered(tenant)
    if answer.version not in known.in_use.get(source.pk, set()):
        alias = ":alias/" in str(source.config.get("key_arn", ""))
        tenant_mark_rotation_pending(
            tenant, source, answer.version, cause="alias" if alias else "store_version"
        )
        return HealthResult.ROTATION_PENDING, f"new key version {answer.version}"
    if answer.material and _material_rotated(source, answer.version, answer.material, known):
        tenant_mark_rotation_pending(tenant, source, answer.version, cause="material")
        return HealthResult.ROTATION_PENDING, f"new key material in {answer.version}"
    return HealthResult.OK, ""


def _material_rotated(source: KeySource, version: str, material: str, known: _Known) -> bool:
    """New key material in the same key: the first marker is recorded, a later change flags."""
    row = known.markers.get((source.pk, version))
    if row is None:
        return False
    if not row.material_marker:
        KekVersion.objects.filter(pk=row.pk).update(material_marker=material)
        row.material_marker = material  # another tenant's source is another row
        return False
    return material != row.material_marker


# A tenant's newest finding, read with the tenant (`_apply`) for `_note_all`.
_LATEST_FINDING = Subquery(
    KeyHealthCheck.objects.filter(tenant=OuterRef("pk"))
    .order_by("-last_at", "-pk")
    .values("pk")[:1]
)


def _note_all(findings: list[tuple[Tenant, KeySource, str, str]]) -> None:
    """Keep the findings: the same as a tenant's last one moves its time, anything else is
    a new row. One statement for the unchanged ones, one for the new; the last ones are
    locked first, so a check asked for at the same moment waits for these."""
    if not findings:
        return
    now = timezone.now()
    last_of = {tenant.pk: getattr(tenant, "last_finding", None) for tenant, *_ in findings}
    with transaction.atomic():
        lasts = {
            pk: (source_id, result, message)
            for pk, source_id, result, message in KeyHealthCheck.objects.select_for_update()
            .filter(pk__in=[pk for pk in last_of.values() if pk is not None])
            .values_list("pk", "source_id", "result", "message")
        }
        unchanged: list[int] = []
        new: list[KeyHealthCheck] = []
        for tenant, source, result, message in findings:
            last_id = last_of.get(tenant.pk)
            if last_id is not None and lasts.get(last_id) == (source.pk, result, message):
                unchanged.append(last_id)
            else:
                new.append(
                    KeyHealthCheck(
                        tenant=tenant,
                        source=source,
                        result=result,
                        message=message,
                        first_at=now,
                        last_at=now,
                    )
                )
        if unchanged:
            KeyHealthCheck.objects.filter(pk__in=unchanged).update(last_at=now, runs=F("runs") + 1)
        if new:
            KeyHealthCheck.objects.bulk_create(new)


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
