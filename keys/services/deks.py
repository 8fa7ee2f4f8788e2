"""Data keys: made, rotated, retired and rewrapped, each an audited transition."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F
from django.http import HttpRequest
from django.utils import timezone

from audit.services import Actor, record
from keys.consumers import data_depends_on, rewrap_other_keys
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
    KeyProvider,
    Wrapped,
    move_wrapped,
)
from keys.registry import provider_for
from keys.rootkey import local_provider
from keys.runtime import dek_context, envelope, publish_key_state
from keys.selectors.sources import (
    active_or_local_source,
    active_source,
)
from tenants.models import DEK_TTL_MAX, DEK_TTL_MIN, ServiceState, Tenant

NOT_ROTATABLE = {ServiceState.REVOKED, ServiceState.DESTROYED}


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
    # order_by() first: DataKey's default ordering (by version) would put the
    # version into the SELECT DISTINCT, listing a tenant once per stale DEK, and
    # each repeat recorded another (empty) rewrap in the tenant's audit trail.
    for tenant_id in stale.order_by().values_list("tenant_id", flat=True).distinct():
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


def _retire_unused_kek_versions() -> None:
    unused = KekVersion.objects.filter(state=KekState.ACTIVE).annotate(live=Count("data_keys"))
    for version in unused:
        newest = version.source.versions.filter(state=KekState.ACTIVE).order_by("-created").first()
        if version.live == 0 and newest is not None and newest.pk != version.pk:
            version.state = KekState.RETIRED
            version.save(update_fields=["state"])


@transaction.atomic
def dek_retire_unused(*, tenant: Tenant) -> list[int]:
    """Retire every non-active DEK no record or object depends on, destroying its wrapped bytes.

    Only once the DEK has been decrypt-only for longer than a process can keep
    believing it is current (KEYWARD_DEK_RETIRE_GRACE_SECONDS): a process that
    missed the rotation's publication could still be writing under it. The
    beat (`keys.retire_unused_deks`) retires the ones that were too young.
    """
    grace = timedelta(seconds=settings.KEYWARD_DEK_RETIRE_GRACE_SECONDS)
    successors = dict(DataKey.objects.filter(tenant=tenant).values_list("version", "created"))
    retired = []
    for dek in DataKey.objects.select_for_update().filter(tenant=tenant, state=DekState.RETIRING):
        replaced_at = successors.get(dek.version + 1)
        if replaced_at is None or timezone.now() - replaced_at < grace:
            continue
        if data_depends_on(dek):
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


def rewrap_many(
    *,
    tenant: Tenant,
    dek_ids: Sequence[int],
    target: KeySource,
    wrapper: KeyProvider,
    while_state: str,
    concurrency: int,
) -> bool:
    """Move DEKs under `target`, in batches of KEYWARD_KEK_REWRAP_BATCH; False when
    the tenant left `while_state` (stop).

    1. Before each batch the tenant must still be in `while_state`; the batch's
       rows are read, and the provider of each KEK they are under is built here
       (building one may read the database; the calls below never do).
    2. Each DEK is moved in one call of `_rewrapped`: by the key store itself
       where it can (`KeyProvider.reencrypt`: AWS KMS between two keys of one
       principal and region), else unwrapped and wrapped again there, so its
       plaintext never leaves that frame. Up to `concurrency` such calls are
       in flight when both providers say their calls only wait on a remote key
       store (`remote`); otherwise one at a time here, since an in-process
       provider (uploaded keys read their material from the database) gains
       nothing from threads.
    3. One transaction writes the batch with no key store called inside it:
       under the tenant's lock, still in the move, each DEK whose wrapped bytes
       are unchanged gets its new blob; one rewrapped meanwhile is left alone.
    4. A failed call fails the batch only after the DEKs that did move are
       written: a rerun (the task's retry, the beat's resume) picks up the rest
       and moves each remaining DEK once.
    """
    size = settings.KEYWARD_KEK_REWRAP_BATCH
    for start in range(0, len(dek_ids), size):
        if Tenant.objects.get(pk=tenant.pk).state != while_state:
            return False
        batch = list(
            DataKey.objects.select_related("kek_version__source").filter(
                pk__in=dek_ids[start : start + size]
            )
        )
        unwrappers: dict[object, KeyProvider] = {}
        for dek in batch:
            source = dek.kek_version.source
            if source.pk not in unwrappers:
                unwrappers[source.pk] = provider_for(source)
        remote = all(getattr(p, "remote", False) for p in [wrapper, *unwrappers.values()])

        rewrapped = partial(_rewrapped, tenant=tenant, unwrappers=unwrappers, wrapper=wrapper)
        if remote and concurrency > 1 and len(batch) > 1:
            with ThreadPoolExecutor(
                max_workers=min(concurrency, len(batch)), thread_name_prefix="rewrap"
            ) as pool:
                answers = list(pool.map(rewrapped, batch))
        else:
            answers = [rewrapped(dek) for dek in batch]
        done = {
            dek.pk: (bytes(dek.wrapped), answer)
            for dek, answer in zip(batch, answers, strict=True)
            if isinstance(answer, Wrapped)
        }
        if not _write_rewrapped(tenant, target, done, while_state):
            return False
        failures = [answer for answer in answers if not isinstance(answer, Wrapped)]
        if failures:
            raise failures[0]
    return True


def _rewrapped(
    dek: DataKey, *, tenant: Tenant, unwrappers: dict[object, KeyProvider], wrapper: KeyProvider
) -> Wrapped | Exception:
    """`dek` under `wrapper`'s key (`move_wrapped`: re-encrypted by the key store, or
    unwrapped and wrapped again); a failure is returned, to be raised after the
    batch's successes are written."""
    context = dek_context(str(tenant.pk), dek.version)
    unwrapper = unwrappers[dek.kek_version.source.pk]
    try:
        return move_wrapped(
            bytes(dek.wrapped),
            context,
            dek.kek_version.provider_version,
            source=unwrapper,
            into=wrapper,
        )
    except Exception as exc:
        return exc


def _write_rewrapped(
    tenant: Tenant,
    target: KeySource,
    done: dict[int, tuple[bytes, Wrapped]],
    while_state: str,
) -> bool:
    """Write the batch's new blobs (see `rewrap_many`, step 3); False to stop."""
    with transaction.atomic():
        if Tenant.objects.select_for_update().get(pk=tenant.pk).state != while_state:
            return False
        if not done:
            return True
        versions: dict[str, KekVersion] = {}
        rows = []
        for row in DataKey.objects.select_for_update().filter(pk__in=list(done)).order_by("pk"):
            before, wrapped = done[row.pk]
            if bytes(row.wrapped) != before:
                continue
            if wrapped.version not in versions:
                versions[wrapped.version] = kek_version_get_or_create(target, wrapped.version)
            row.kek_version = versions[wrapped.version]
            row.wrapped = wrapped.blob
            rows.append(row)
        DataKey.objects.bulk_update(rows, ["kek_version", "wrapped"])
    return True
