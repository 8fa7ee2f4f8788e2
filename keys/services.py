"""Writes to keys: each an explicit, audited transition."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from keys.ciphertext import CiphertextError
from keys.envelope import EnvelopeError
from keys.providers.base import KeyProvider, KeyProviderError

if TYPE_CHECKING:
    from archive.reencrypt import Transform
from keys.models import (
    DataKey,
    DekState,
    JobState,
    KekState,
    KekVersion,
    KeySource,
    ReencryptionJob,
    SourceKind,
    SourceState,
)
from keys.registry import local_provider, provider_for
from keys.runtime import dek_context, envelope, publish_key_state
from tenants.models import DEK_TTL_MAX, DEK_TTL_MIN, ServiceState, Tenant


class KeyActionRefused(Exception):
    """A key action that the tenant's state does not allow; the message says why."""


NOT_ROTATABLE = {ServiceState.REVOKED, ServiceState.DESTROYED}


def active_source(tenant: Tenant) -> KeySource:
    return KeySource.objects.get(tenant=tenant, state=SourceState.ACTIVE)


def kek_version_get_or_create(source: KeySource, provider_version: str) -> KekVersion:
    version, created = KekVersion.objects.get_or_create(
        source=source,
        provider_version=provider_version,
        defaults={"state": KekState.ACTIVE, "validated_at": timezone.now()},
    )
    if not created and version.state != KekState.ACTIVE:
        version.state = KekState.ACTIVE
        version.save(update_fields=["state"])
    return version


def _new_dek(*, tenant: Tenant, source: KeySource, version: int) -> DataKey:
    """Make, wrap and store a DEK. The plaintext lives only in this frame."""
    material = secrets.token_bytes(32)
    wrapped = provider_for(source).wrap(material, dek_context(str(tenant.pk), version))
    del material
    kek = kek_version_get_or_create(source, wrapped.version)
    return DataKey.objects.create(
        tenant=tenant, version=version, wrapped=wrapped.blob, kek_version=kek
    )


@transaction.atomic
def keys_bootstrap_tenant(*, tenant: Tenant, actor: Actor) -> DataKey:
    """Every new tenant starts vendor-managed, with its first DEK."""
    source = KeySource.objects.create(
        tenant=tenant, kind=SourceKind.LOCAL, state=SourceState.ACTIVE
    )
    dek = _new_dek(tenant=tenant, source=source, version=1)
    record(
        tenant=tenant,
        actor=actor,
        action="dek.create",
        target=f"DEK v{dek.version}",
        details={"kek": dek.kek_version.provider_version, "source": source.kind},
    )
    publish_key_state(str(tenant.pk))
    return dek


@transaction.atomic
def dek_rotate(
    *, tenant: Tenant, actor: Actor, reason: str, request: HttpRequest | None = None
) -> DataKey:
    """Make a new active DEK; the previous one keeps decrypting until re-encrypted.

    The tenant row is locked, so concurrent rotations (a schedule, a limit and
    a person at once) produce one new DEK each in turn, never two actives.
    """
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.state in NOT_ROTATABLE or locked.is_paused:
        # Paused covers moves between key sources: a DEK made mid-move would be
        # wrapped by the source being left.
        raise KeyActionRefused(
            f"The data key cannot be rotated while the tenant is {locked.get_state_display()}."
        )
    dek = _rotate_under(locked, active_source(locked), actor=actor, reason=reason, request=request)
    publish_key_state(str(locked.pk))
    return dek


def dek_rotate_for_move(*, tenant: Tenant, source: KeySource, reason: str) -> DataKey:
    """A new active DEK under `source` while the tenant is paused for a move between
    key sources (its objects are re-encrypted under it). The caller holds the
    tenant's row lock and has just made `source` the active one."""
    return _rotate_under(tenant, source, actor=Actor.system("key move"), reason=reason)


def _rotate_under(
    locked: Tenant,
    source: KeySource,
    *,
    actor: Actor,
    reason: str,
    request: HttpRequest | None = None,
) -> DataKey:
    """The active DEK becomes decrypt-only and a new one is made under `source` (audited)."""
    current = DataKey.objects.filter(tenant=locked, state=DekState.ACTIVE).first()
    last = DataKey.objects.filter(tenant=locked).order_by("-version").first()
    if current is not None:
        current.state = DekState.RETIRING
        current.save(update_fields=["state"])
    dek = _new_dek(tenant=locked, source=source, version=(last.version if last else 0) + 1)
    record(
        tenant=locked,
        actor=actor,
        action="dek.rotate",
        target=f"DEK v{dek.version}",
        reason=reason,
        details={
            "from_version": current.version if current else None,
            "to_version": dek.version,
            "kek": dek.kek_version.provider_version,
        },
        request=request,
    )
    return dek


def dek_rotate_if_due(*, tenant: Tenant) -> DataKey | None:
    """Rotate when the active DEK is older than the tenant's rotation period."""
    current = DataKey.objects.filter(tenant=tenant, state=DekState.ACTIVE).first()
    if current is None or tenant.state in NOT_ROTATABLE or tenant.is_paused:
        return None
    if tenant.state == ServiceState.DEGRADED:
        return None  # the key store is unreachable: rotate when it answers
    age = timezone.now() - current.created
    if age.total_seconds() < tenant.dek_rotation_days * 86400:
        return None
    return dek_rotate(
        tenant=tenant,
        actor=Actor.system("scheduled rotation"),
        reason=f"scheduled: older than {tenant.dek_rotation_days} days",
    )


@transaction.atomic
def tenant_set_dek_cache_ttl(
    *, tenant: Tenant, ttl: int, actor: Actor, request: HttpRequest | None = None
) -> Tenant:
    if not DEK_TTL_MIN <= ttl <= DEK_TTL_MAX:
        raise ValidationError(
            {"ttl": f"Choose between {DEK_TTL_MIN} seconds and {DEK_TTL_MAX // 3600} hours."}
        )
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    old = locked.dek_cache_ttl
    locked.dek_cache_ttl = ttl
    fields = ["dek_cache_ttl"]
    if ttl < old:
        # Keys cached under the longer TTL must not outlive the new, shorter bound.
        locked.key_epoch += 1
        fields.append("key_epoch")
    locked.save(update_fields=fields)
    record(
        tenant=locked,
        actor=actor,
        action="tenant.set_dek_cache_ttl",
        details={"from": old, "to": ttl},
        request=request,
    )
    publish_key_state(str(locked.pk))
    return locked


def kek_rewrap_vendor_deks(*, actor: Actor) -> dict[str, int]:
    """Move every vendor-wrapped DEK to the newest root key version.

    One transaction per tenant (locking its DEKs), so a crash leaves each
    tenant either fully old or fully new, and a rerun finishes the rest.
    """
    provider = local_provider()
    newest = provider.current_version()
    moved: dict[str, int] = defaultdict(int)
    stale = (
        DataKey.objects.filter(kek_version__source__kind=SourceKind.LOCAL)
        .exclude(kek_version__provider_version=newest)
        .exclude(state__in=[DekState.RETIRED, DekState.DESTROYED])
    )
    for tenant_id in stale.values_list("tenant_id", flat=True).distinct():
        with transaction.atomic():
            tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
            source = active_or_local_source(tenant)
            target = kek_version_get_or_create(source, newest)
            rows = list(
                stale.filter(tenant=tenant).select_related("kek_version").select_for_update()
            )
            for dek in rows:
                context = dek_context(str(tenant.pk), dek.version)
                material = provider.unwrap(
                    bytes(dek.wrapped), context, dek.kek_version.provider_version
                )
                wrapped = provider.wrap(material, context)
                del material
                dek.wrapped = wrapped.blob
                dek.kek_version = target
                dek.save(update_fields=["wrapped", "kek_version"])
            moved[tenant.slug] = len(rows)
            record(
                tenant=tenant,
                actor=actor,
                action="kek.rewrap",
                target=newest,
                details={"data_keys": len(rows)},
            )
    # The tenants' other vendor-wrapped keys (lookup keys) follow, one at a time.
    for tenant in Tenant.objects.filter(
        key_sources__kind=SourceKind.LOCAL, key_sources__state=SourceState.ACTIVE
    ):
        rewrap_other_keys(
            tenant=tenant,
            target=active_or_local_source(tenant),
            wrapper=provider,
            while_state=tenant.state,
            version=newest,
        )
    _retire_unused_kek_versions()
    record(
        tenant=None,
        actor=actor,
        action="kek.rewrap",
        target=newest,
        details={"tenants": len(moved), "data_keys": sum(moved.values())},
    )
    return dict(moved)


def active_or_local_source(tenant: Tenant) -> KeySource:
    source = KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).order_by("-created")
    found = source.first()
    if found is None:
        raise KeyActionRefused(f"{tenant} has no vendor-managed key source")
    return found


def _retire_unused_kek_versions() -> None:
    unused = KekVersion.objects.filter(state=KekState.ACTIVE).annotate(live=Count("data_keys"))
    for version in unused:
        newest = version.source.versions.filter(state=KekState.ACTIVE).order_by("-created").first()
        if version.live == 0 and newest is not None and newest.pk != version.pk:
            version.state = KekState.RETIRED
            version.save(update_fields=["state"])


# -- re-encryption --------------------------------------------------------------


@transaction.atomic
def reencryption_start(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> ReencryptionJob:
    from keys.tasks import run_reencryption

    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.state in NOT_ROTATABLE or locked.is_paused:
        raise KeyActionRefused(
            f"Re-encryption is on hold while the tenant is {locked.get_state_display()}."
        )
    open_job = ReencryptionJob.objects.filter(
        tenant=locked, state__in=[JobState.QUEUED, JobState.RUNNING]
    ).first()
    if open_job is not None:
        return open_job
    target = DataKey.objects.get(tenant=locked, state=DekState.ACTIVE)
    from archive.selectors import records_not_under

    job = ReencryptionJob.objects.create(
        tenant=locked, target_dek=target, total=records_not_under(locked, target).count()
    )
    record(
        tenant=locked,
        actor=actor,
        action="records.reencrypt",
        target=f"DEK v{target.version}",
        details={"records": job.total, "job": str(job.pk)},
        request=request,
    )
    transaction.on_commit(lambda: run_reencryption.delay(str(job.pk)))
    return job


def reencryption_run(*, job_id: str, transform: Transform | None = None) -> ReencryptionJob:
    """Run (or resume) a re-encryption job to the end.

    1. Each batch re-encrypts the next records after the checkpoint and moves
       the checkpoint in the same transaction: killed anywhere, a rerun
       neither skips nor repeats a committed batch. On PostgreSQL two
       batches are re-sealed and written at once (`ReencryptionPass`).
    2. Rows changed while they were read are skipped by the write; a new pass
       from the start picks them up (at most three passes).
    3. The tenant's objects under older DEKs are rewritten under the current
       one, one object per transaction (`objects_reencrypt_pass`).
    4. When no record and no object remains under an older DEK, those DEKs are
       retired and their wrapped bytes destroyed.

    `transform` replaces the re-sealing step; only the benchmark uses it, to
    time the same job without cryptography.
    """
    job = ReencryptionJob.objects.select_related("tenant", "target_dek").get(pk=job_id)
    if job.state in (JobState.DONE, JobState.FAILED):
        return job
    if job.target_dek.state != DekState.ACTIVE:
        return _reencryption_failed(
            job, "The data key was rotated while the job waited; start re-encryption again."
        )
    from archive.services import ServicePaused
    from archive.storage import StorageError

    try:
        return _reencryption_run(job, transform)
    except (KeyProviderError, EnvelopeError, CiphertextError, StorageError, ServicePaused) as exc:
        return _reencryption_failed(job, f"Re-encryption stopped: {exc}")


def _reencryption_failed(job: ReencryptionJob, error: str) -> ReencryptionJob:
    """End a job that cannot go on, so that a new one can start; record why."""
    with transaction.atomic():
        locked = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
        if locked.state in (JobState.DONE, JobState.FAILED):
            return locked
        locked.state = JobState.FAILED
        locked.error = error
        locked.finished = timezone.now()
        locked.save(update_fields=["state", "error", "finished"])
        record(
            tenant=locked.tenant,
            actor=Actor.system("re-encryption"),
            action="records.reencrypt.failed",
            outcome=Outcome.FAILURE,
            reason=error,
        )
    return locked


def _reencryption_run(job: ReencryptionJob, transform: Transform | None) -> ReencryptionJob:
    from django.db.models import Value
    from django.db.models.functions import Greatest

    from archive.reencrypt import ReencryptionPass
    from archive.selectors import records_not_under

    ReencryptionJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)
    tenant, target = job.tenant, job.target_dek

    def save(rewritten: int, checkpoint: int) -> bool:
        # In the batch's transaction. Batches commit out of order, so the
        # checkpoint only ever moves forward.
        return (
            ReencryptionJob.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
                done=F("done") + rewritten,
                last_record_id=Greatest(F("last_record_id"), Value(checkpoint)),
            )
            == 1
        )

    for _ in range(3):
        after = ReencryptionJob.objects.values_list("last_record_id", flat=True).get(pk=job.pk)
        run = ReencryptionPass(
            tenant=tenant, target=target, after_id=after, save=save, transform=transform
        )
        run.run()
        if run.halted:
            return ReencryptionJob.objects.get(pk=job.pk)
        if not records_not_under(tenant, target).exists():
            break
        ReencryptionJob.objects.filter(pk=job.pk).update(last_record_id=0)
    # Objects are data too: rewritten under the current DEK, or the older DEKs
    # they use could never be retired.
    from objects.services import objects_reencrypt_pass

    objects_rewritten, objects_left = objects_reencrypt_pass(tenant)
    retired = dek_retire_unused(tenant=tenant)
    with transaction.atomic():
        job = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
        job.state = JobState.DONE
        job.finished = timezone.now()
        job.save(update_fields=["state", "finished"])
        record(
            tenant=tenant,
            actor=Actor.system("re-encryption"),
            action="records.reencrypt.done",
            target=f"DEK v{job.target_dek.version}",
            details={
                "records": job.done,
                "objects": objects_rewritten,
                "objects_not_reencrypted": objects_left[:20],
                "retired_versions": retired,
            },
        )
    return job


def _objects_depend_on(dek: DataKey) -> bool:
    """Objects are under it, or a move of objects is writing under it."""
    from objects.models import OPEN_MIGRATION_STATES, ObjectMigration, StoredObject

    return (
        StoredObject.objects.filter(dek=dek).exists()
        or ObjectMigration.objects.filter(target_dek=dek, state__in=OPEN_MIGRATION_STATES).exists()
    )


@transaction.atomic
def dek_retire_unused(*, tenant: Tenant) -> list[int]:
    """Retire every non-active DEK no record or object depends on, destroying its wrapped bytes.

    Only once the DEK has been decrypt-only for longer than a process can keep
    believing it is current (KEYWARD_DEK_RETIRE_GRACE_SECONDS): a process that
    missed the rotation's publication could still be writing under it. The
    beat (`keys.retire_unused_deks`) retires the ones that were too young.
    """
    from archive.models import SealedFields

    grace = timedelta(seconds=settings.KEYWARD_DEK_RETIRE_GRACE_SECONDS)
    successors = dict(DataKey.objects.filter(tenant=tenant).values_list("version", "created"))
    retired = []
    for dek in DataKey.objects.select_for_update().filter(tenant=tenant, state=DekState.RETIRING):
        replaced_at = successors.get(dek.version + 1)
        if replaced_at is None or timezone.now() - replaced_at < grace:
            continue
        if SealedFields.objects.filter(dek=dek).exists() or _objects_depend_on(dek):
            continue
        dek.state = DekState.RETIRED
        dek.wrapped = b""
        dek.retired_at = timezone.now()
        dek.save(update_fields=["state", "wrapped", "retired_at"])
        retired.append(dek.version)
        record(
            tenant=tenant,
            actor=Actor.system("re-encryption"),
            action="dek.retire",
            target=f"DEK v{dek.version}",
            reason="no data depends on it; wrapped key destroyed",
        )
    if retired:
        # Drop the retired DEKs from every process's cache too.
        Tenant.objects.filter(pk=tenant.pk).update(key_epoch=F("key_epoch") + 1)
        publish_key_state(str(tenant.pk))
        envelope().forget(str(tenant.pk))
    return retired


# Other keys a tenant keeps wrapped by its KEK (the blind-index keys) move with
# its data keys: each app registers a mover, called by every key move before
# it switches. A mover rewraps, one key per transaction and with no lock held
# across key-store calls, every key not under `target` (or, with `version`, not
# under that version of it); it returns False when the tenant left `while_state`.
WrappedKeyMover = Callable[[Tenant, KeySource, KeyProvider, str, str | None], bool]
_wrapped_key_movers: list[WrappedKeyMover] = []


def wrapped_key_mover_register(mover: WrappedKeyMover) -> None:
    if mover not in _wrapped_key_movers:
        _wrapped_key_movers.append(mover)


# ...and are destroyed with them when a tenant is crypto-shredded.
WrappedKeyShredder = Callable[[Tenant], int]
_wrapped_key_shredders: list[WrappedKeyShredder] = []


def wrapped_key_shredder_register(shredder: WrappedKeyShredder) -> None:
    if shredder not in _wrapped_key_shredders:
        _wrapped_key_shredders.append(shredder)


def shred_other_keys(tenant: Tenant) -> int:
    """Destroy the tenant's other wrapped keys (in the caller's transaction); how many."""
    return sum(shredder(tenant) for shredder in _wrapped_key_shredders)


def rewrap_other_keys(
    *,
    tenant: Tenant,
    target: KeySource,
    wrapper: KeyProvider,
    while_state: str,
    version: str | None = None,
) -> bool:
    """Move every registered kind of wrapped key under `target`; False to stop."""
    return all(
        mover(tenant, target, wrapper, while_state, version) for mover in _wrapped_key_movers
    )


def rewrap_one(
    *,
    tenant: Tenant,
    dek_id: int,
    target: KeySource,
    wrapper: KeyProvider,
    while_state: str,
) -> bool:
    """Move one DEK under `target`; False when the tenant left `while_state` (stop).

    The key stores are called with no lock held (a revoke must never wait on a
    KMS); the write then checks, under lock, that the tenant is still in the
    same move and that the DEK was not rewrapped meanwhile.
    """
    if Tenant.objects.get(pk=tenant.pk).state != while_state:
        return False
    dek = DataKey.objects.select_related("kek_version__source").get(pk=dek_id)
    before = bytes(dek.wrapped)
    context = dek_context(str(tenant.pk), dek.version)
    material = provider_for(dek.kek_version.source).unwrap(
        before, context, dek.kek_version.provider_version
    )
    wrapped = wrapper.wrap(material, context)
    del material
    with transaction.atomic():
        if Tenant.objects.select_for_update().get(pk=tenant.pk).state != while_state:
            return False
        row = DataKey.objects.select_for_update().get(pk=dek_id)
        if bytes(row.wrapped) == before:
            row.kek_version = kek_version_get_or_create(target, wrapped.version)
            row.wrapped = wrapped.blob
            row.save(update_fields=["kek_version", "wrapped"])
    return True
