"""Wrapped keys in a format that is read but no longer written, made again in
today's format under the same KEK version: KMIP version 1 blobs (AES-CBC on
the server, the padding oracle) and unsigned Key Vault blobs (forgeable from
the public key). Until a Key Vault source's blobs are all signed it keeps
reading unsigned ones; once they are, its configuration says so
(`wraps_signed`) and an unsigned blob is refused from then on.

Resumable and safe to rerun: every blob is written in its own short
transaction, only if it still holds the bytes that were read (a move,
rotation or revoke in between wins), and no lock is held across a key-store
call. Only tenants whose service runs normally are touched: the keys of a
revoked tenant are never unwrapped for this.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from django.db import transaction

from audit.models import Outcome
from audit.services import Actor, record
from keys.consumers import own_wrapped_keys
from keys.credentials import CredentialsMissing
from keys.models import DataKey, DekState, KeySource, SourceKind
from keys.providers.base import KeyProvider, KeyProviderError
from keys.registry import provider_for
from keys.runtime import dek_context
from tenants.models import ServiceState, Tenant

logger = logging.getLogger(__name__)

# Enqueued by name (beat and the management command): keys.tasks imports this module.
REWRAP_OLD_FORMATS_TASK = "keys.rewrap_old_formats"

# The tenants whose keys may be unwrapped to rewrap them: service running,
# no move under way (a move rewraps everything it touches anyway).
FORMAT_STATES = (ServiceState.VENDOR_MANAGED, ServiceState.BYOK_ACTIVE)

# Set on a Key Vault source once none of its blobs is unsigned.
WRAPS_SIGNED = "wraps_signed"


@dataclass(frozen=True)
class StoredBlob:
    """One wrapped key as stored: a DEK or a consumer's own key (a lookup key)."""

    what: str  # "data key" or "lookup key", for counts and messages
    source: KeySource
    version: str  # the KEK version (provider_version) it is wrapped under
    blob: bytes
    context: dict[str, str]
    replace: Callable[[bytes, bytes], bool]  # store `after` if it still holds `before`


def _dek_replacer(dek: DataKey) -> Callable[[bytes, bytes], bool]:
    def replace(before: bytes, after: bytes) -> bool:
        changed = DataKey.objects.filter(
            pk=dek.pk, kek_version_id=dek.kek_version_id, wrapped=before
        ).update(wrapped=after)
        return changed == 1

    return replace


def stored_blobs(tenant: Tenant) -> list[StoredBlob]:
    """Every wrapped key the tenant still keeps (destroyed and retired ones hold none)."""
    deks = (
        DataKey.objects.filter(tenant=tenant)
        .exclude(state__in=[DekState.RETIRED, DekState.DESTROYED])
        .exclude(wrapped=b"")
        .select_related("kek_version__source")
        .order_by("version")
    )
    blobs = [
        StoredBlob(
            what="data key",
            source=dek.kek_version.source,
            version=dek.kek_version.provider_version,
            blob=bytes(dek.wrapped),
            context=dek_context(str(tenant.pk), dek.version),
            replace=_dek_replacer(dek),
        )
        for dek in deks
    ]
    for hooks, key in own_wrapped_keys(tenant):
        blobs.append(
            StoredBlob(
                what="lookup key",
                source=key.kek_version.source,
                version=key.kek_version.provider_version,
                blob=key.blob,
                context=key.context,
                replace=partial(hooks.replace, key.id),
            )
        )
    return blobs


def blob_store(tenant: Tenant, item: StoredBlob, after: bytes, *, states: Iterable[str]) -> bool:
    """Write `after` in place of `item` if the tenant is still in one of `states`
    and the blob is unchanged since it was read."""
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if locked.state not in set(states):
            return False
        return item.replace(item.blob, after)


@dataclass
class FormatReport:
    rewrapped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    left: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    signed_sources: int = 0


class ProvidersOfPass:
    """One provider per source for a pass (building one may unseal credentials)."""

    def __init__(self) -> None:
        self._built: dict[str, KeyProvider] = {}

    def __call__(self, source: KeySource) -> KeyProvider:
        key = str(source.pk)
        if key not in self._built:
            self._built[key] = provider_for(source)
        return self._built[key]


def wrapped_formats_upgrade(*, actor: Actor, tenant: Tenant | None = None) -> FormatReport:
    """Rewrap every old-format blob of the running tenants (or of `tenant`)."""
    report = FormatReport()
    tenants = Tenant.objects.filter(state__in=FORMAT_STATES).order_by("slug")
    if tenant is not None:
        tenants = tenants.filter(pk=tenant.pk)
    for each in tenants:
        rewrapped, failures = _upgrade_tenant(each)
        report.rewrapped[each.slug] = rewrapped
        if failures:
            report.left[each.slug] = len(failures)
        if rewrapped or failures:
            record(
                tenant=each,
                actor=actor,
                action="kek.reformat",
                outcome=Outcome.FAILURE if failures else Outcome.SUCCESS,
                reason="; ".join(sorted(set(failures)))[:500] if failures else "",
                details={"rewrapped": rewrapped, "left": len(failures)},
            )
        report.signed_sources += _mark_signed(each, actor)
    return report


def _upgrade_tenant(tenant: Tenant) -> tuple[int, list[str]]:
    providers = ProvidersOfPass()
    rewrapped, failures = 0, []
    for item in stored_blobs(tenant):
        if item.source.kind == SourceKind.LOCAL:
            continue  # the vendor key's versions move with root-key rotation
        try:
            provider = providers(item.source)
            if not provider.needs_rewrap(item.blob):
                continue
            after = provider.rewrap(item.blob, item.context, item.version)
        except (KeyProviderError, CredentialsMissing) as exc:
            # Left for the next pass; the blob keeps reading in its old format.
            failures.append(f"{item.what} under {item.source.get_kind_display()}: {exc}")
            logger.info("old-format %s of %s left: %s", item.what, tenant.slug, exc)
            continue
        if blob_store(tenant, item, after, states=FORMAT_STATES):
            rewrapped += 1
    return rewrapped, failures


def _mark_signed(tenant: Tenant, actor: Actor) -> int:
    """Key Vault sources of `tenant` with no unsigned blob left start refusing them."""
    marked = 0
    sources = [
        source
        for source in KeySource.objects.filter(tenant=tenant, kind=SourceKind.AZURE_KEYVAULT)
        if source.config.get(WRAPS_SIGNED) != "true"
    ]
    blobs = stored_blobs(tenant) if sources else []
    for source in sources:
        under = [item.blob for item in blobs if item.source.pk == source.pk]
        try:
            if under and any(map(provider_for(source).needs_rewrap, under)):
                continue
        except (KeyProviderError, CredentialsMissing):
            continue
        with transaction.atomic():
            locked = KeySource.objects.select_for_update().get(pk=source.pk)
            # The flag only narrows what unwrapping accepts: a passing test of
            # the configuration still holds.
            tested = locked.tested_config_digest == locked.config_digest()
            locked.config = {**locked.config, WRAPS_SIGNED: "true"}
            if tested:
                locked.tested_config_digest = locked.config_digest()
            locked.save(update_fields=["config", "tested_config_digest", "updated"])
            record(
                tenant=tenant,
                actor=actor,
                action="key.wraps_signed",
                target=str(source.pk),
                details={"kind": source.kind},
            )
        marked += 1
    return marked
