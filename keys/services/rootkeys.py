"""The vendor root key's life: rotate, move everything under it, retire a version.

A root key version is depended on by
- the vendor-managed DEKs and lookup keys it wraps,
- the secrets sealed under it (keys/vault.py): customers' key-store
  credentials, uploaded key material, import private keys, audit stream
  webhook secrets,
- the origin signatures of Key Vault blobs, made with keys derived from it.

`root_key_rewrap` moves all of them to the current version, each item in its
own short transaction and only if unchanged since it was read, so a crash or
a rerun loses and doubles nothing. `root_key_retire` then refuses while
anything still names the version, and otherwise removes it from the key file:
from then on nothing under it can be opened, by anyone holding an old copy of
the database included.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction

from audit.models import StreamDestination
from audit.services import Actor, record
from audit.streaming.secrets import STREAM_SECRET
from keys.credentials import CredentialsMissing, credentials_reseal
from keys.errors import KeyActionRefused
from keys.models import KekState, KekVersion, KeyImport, KeySource, SourceKind
from keys.providers.base import KeyProviderError
from keys.providers.local import RootKeyFileError
from keys.rootkey import local_provider, root_key_file
from keys.selectors.sources import UPLOADED_KEY
from keys.services.deks import kek_rewrap_vendor_deks
from keys.services.formats import ProvidersOfPass, blob_store, stored_blobs
from keys.services.uploads import IMPORT_PRIVATE
from keys.vault import Sealed, packed, reseal, unpacked
from tenants.models import ServiceState, Tenant

logger = logging.getLogger(__name__)

# A signature is made again without the key store, so it may be in any state
# but destroyed (whose keys are gone).
_RESIGN_STATES = tuple(s for s in ServiceState.values if s != ServiceState.DESTROYED)


@dataclass(frozen=True)
class SealedElsewhere:
    """Secrets sealed under the root key by a higher layer (people's second
    factors), which this module cannot import: registered at start-up."""

    what: str  # plural, for reports: "second-factor seeds"
    reseal: Callable[[], int]  # seal again under the current version; how many moved
    under: Callable[[str], int]  # how many are still sealed under a version label


_sealed_elsewhere: dict[str, SealedElsewhere] = {}


def sealed_elsewhere_register(kind: SealedElsewhere) -> None:
    _sealed_elsewhere[kind.what] = kind


def _label(number: int) -> str:
    return f"root-{number}"


def root_key_rotate(*, actor: Actor) -> int:
    """Add a root key version and make it current; older versions keep opening."""
    number = root_key_file().rotate()
    record(tenant=None, actor=actor, action="kek.root_rotate", target=_label(number))
    return number


@dataclass
class RootRewrap:
    data_keys: dict[str, int] = field(default_factory=dict)  # by tenant slug
    sealed: Counter[str] = field(default_factory=Counter)
    signatures: int = 0


def root_key_rewrap(*, actor: Actor) -> RootRewrap:
    """Move everything under an older root key version to the current one."""
    report = RootRewrap()
    # Sealed secrets first: building a customer's provider opens its credentials.
    report.sealed = _reseal_secrets()
    report.data_keys = kek_rewrap_vendor_deks(actor=actor)
    report.signatures = _resign_blobs()
    record(
        tenant=None,
        actor=actor,
        action="kek.root_rewrap",
        target=local_provider().current_version(),
        details={
            "data_keys": sum(report.data_keys.values()),
            "sealed": dict(report.sealed),
            "signatures": report.signatures,
        },
    )
    return report


def _reseal_secrets() -> Counter[str]:
    current = local_provider().current_version()
    moved: Counter[str] = Counter()
    for source_id in (
        KeySource.objects.exclude(sealed_credentials=None)
        .exclude(sealed_credentials_root=current)
        .values_list("pk", flat=True)
    ):
        with transaction.atomic():
            source = KeySource.objects.select_for_update().get(pk=source_id)
            if credentials_reseal(source):
                moved["credentials"] += 1
    prefix = current.encode() + b"\0"
    for version_id in KekVersion.objects.exclude(material=None).values_list("pk", flat=True):
        with transaction.atomic():
            version = KekVersion.objects.select_for_update().get(pk=version_id)
            stored = bytes(version.material or b"")
            if not stored or stored.startswith(prefix):
                continue
            sealed = reseal(purpose=UPLOADED_KEY, owner=str(version.pk), sealed=unpacked(stored))
            if sealed is not None:
                version.material = packed(sealed)
                version.save(update_fields=["material"])
                moved["uploaded keys"] += 1
    for import_id in (
        KeyImport.objects.exclude(private_wrapped=b"")
        .exclude(private_kek_version=current)
        .values_list("pk", flat=True)
    ):
        with transaction.atomic():
            key_import = KeyImport.objects.select_for_update().get(pk=import_id)
            if not key_import.private_wrapped:
                continue
            sealed = reseal(
                purpose=IMPORT_PRIVATE,
                owner=str(key_import.pk),
                sealed=Sealed(bytes(key_import.private_wrapped), key_import.private_kek_version),
            )
            if sealed is not None:
                key_import.private_wrapped = sealed.blob
                key_import.private_kek_version = sealed.root_version
                key_import.save(update_fields=["private_wrapped", "private_kek_version"])
                moved["import private keys"] += 1
    for destination_id in StreamDestination.objects.exclude(sealed_secret=None).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            destination = StreamDestination.objects.select_for_update().get(pk=destination_id)
            stored = bytes(destination.sealed_secret or b"")
            if not stored or stored.startswith(prefix):
                continue
            sealed = reseal(
                purpose=STREAM_SECRET, owner=str(destination.pk), sealed=unpacked(stored)
            )
            if sealed is not None:
                destination.sealed_secret = packed(sealed)
                destination.save(update_fields=["sealed_secret"])
                moved["audit stream secrets"] += 1
    for kind in _sealed_elsewhere.values():
        count = kind.reseal()
        if count:
            moved[kind.what] += count
    return moved


def _resign_blobs() -> int:
    """Customer-key blobs signed by the vendor under an older version, signed again."""
    current = root_key_file().current()[0]
    providers = ProvidersOfPass()
    resigned = 0
    for tenant in Tenant.objects.exclude(state=ServiceState.DESTROYED).order_by("slug"):
        for item in stored_blobs(tenant):
            if item.source.kind == SourceKind.LOCAL:
                continue  # moved by kek_rewrap_vendor_deks, under a new KEK version
            try:
                provider = providers(item.source)
                if provider.vendor_root_version(item.blob) in (None, current):
                    continue
                after = provider.resign(item.blob, item.context)
            except (KeyProviderError, CredentialsMissing) as exc:
                # Left under the old version: retiring it stays refused and says so.
                logger.warning("%s of %s not signed again: %s", item.what, tenant.slug, exc)
                continue
            if blob_store(tenant, item, after, states=_RESIGN_STATES):
                resigned += 1
    return resigned


def root_key_dependents(number: int) -> Counter[str]:
    """What still depends on root key version `number`: {what: how many}."""
    label = _label(number)
    found: Counter[str] = Counter()
    found["key-store credentials"] = (
        KeySource.objects.filter(sealed_credentials_root=label)
        .exclude(sealed_credentials=None)
        .count()
    )
    prefix = label.encode() + b"\0"
    found["uploaded keys"] = len(
        [
            material
            for material in KekVersion.objects.exclude(material=None).values_list(
                "material", flat=True
            )
            if material is not None and bytes(material).startswith(prefix)
        ]
    )
    found["import private keys"] = (
        KeyImport.objects.filter(private_kek_version=label).exclude(private_wrapped=b"").count()
    )
    found["audit stream secrets"] = len(
        [
            stored
            for stored in StreamDestination.objects.exclude(sealed_secret=None).values_list(
                "sealed_secret", flat=True
            )
            if stored is not None and bytes(stored).startswith(prefix)
        ]
    )
    for kind in _sealed_elsewhere.values():
        found[kind.what] = kind.under(label)
    providers = ProvidersOfPass()
    for tenant in Tenant.objects.all():
        for item in stored_blobs(tenant):
            if item.source.kind == SourceKind.LOCAL:
                depends = item.version == label
            else:
                try:
                    depends = providers(item.source).vendor_root_version(item.blob) == number
                except (KeyProviderError, CredentialsMissing):
                    depends = True  # cannot tell: keep the version
            if depends:
                found[f"{item.what}s"] += 1
    return +found  # only what is there


def root_key_retire(*, number: int, actor: Actor) -> None:
    """Remove root key version `number` from the key file, once nothing depends on it."""
    versions = root_key_file().versions()
    if number not in versions:
        raise KeyActionRefused(f"{_label(number)} is not in the root key file.")
    if number == root_key_file().current()[0]:
        raise KeyActionRefused(
            f"{_label(number)} is the current root key version: rotate, rewrap, then retire it."
        )
    dependents = root_key_dependents(number)
    if dependents:
        listed = ", ".join(f"{count} {what}" for what, count in sorted(dependents.items()))
        raise KeyActionRefused(
            f"{_label(number)} still protects {listed}: run rewrap_data_keys first."
        )
    try:
        root_key_file().retire(number)
    except RootKeyFileError as exc:
        raise KeyActionRefused(str(exc)) from None
    KekVersion.objects.filter(
        source__kind=SourceKind.LOCAL, provider_version=_label(number)
    ).update(state=KekState.RETIRED)
    record(tenant=None, actor=actor, action="kek.root_retire", target=_label(number))
