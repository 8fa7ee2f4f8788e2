"""Reads of a tenant's key sources, key versions and saved settings."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.utils import timezone

from keys.credentials import CredentialsMissing, credentials_of
from keys.errors import KeyActionRefused
from keys.models import DataKey, DekState, KekState, KekVersion, KeySource, SourceKind, SourceState
from keys.providers.uploaded import MaterialDestroyed
from keys.vault import unpacked, unseal
from tenants.models import Tenant

LIVE_DEK_STATES = [DekState.ACTIVE, DekState.RETIRING]
# The vault purpose an uploaded key's material is sealed under.
UPLOADED_KEY = "uploaded-key"


def active_source(tenant: Tenant) -> KeySource:
    return KeySource.objects.get(tenant=tenant, state=SourceState.ACTIVE)


def active_or_local_source(tenant: Tenant) -> KeySource:
    source = KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).order_by("-created")
    found = source.first()
    if found is None:
        raise KeyActionRefused(f"{tenant} has no vendor-managed key source")
    return found


def active_customer_source(tenant: Tenant) -> KeySource:
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    if source is None:
        raise KeyActionRefused("This tenant does not use a key of its own.")
    return source


def pending_version(source: KeySource) -> KekVersion | None:
    return source.versions.filter(state=KekState.PENDING).order_by("-created").first()


def draft_source(tenant: Tenant, kind: str) -> KeySource | None:
    """The tenant's not-yet-active registration of this kind, if any."""
    return (
        KeySource.objects.filter(tenant=tenant, kind=kind)
        .exclude(state__in=[SourceState.ACTIVE, SourceState.RETIRED, SourceState.REVOKED])
        .first()
    )


def current_source(tenant: Tenant, kind: str) -> KeySource | None:
    """The registration a page of this kind shows: the one being set up, else the active one."""
    return (
        draft_source(tenant, kind)
        or KeySource.objects.filter(tenant=tenant, kind=kind, state=SourceState.ACTIVE).first()
    )


def byok_enable_progress(tenant: Tenant, source: KeySource) -> tuple[int, int]:
    """(DEKs under the customer's key, DEKs in all) for the progress bar."""
    live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES)
    return live.filter(kek_version__source=source).count(), live.count()


def saved_credentials(tenant: Tenant, kind: str) -> dict[str, str]:
    source = draft_source(tenant, kind)
    if source is None or not source.sealed_credentials:
        return {}
    try:
        return credentials_of(source)
    except CredentialsMissing:
        return {}


def kmip_allowed_networks(tenant: Tenant) -> tuple[str, ...]:
    """The private networks this tenant's KMIP server may be in: the operator's bare
    CIDRs, and those given to this tenant ("<slug>:<CIDR>")."""
    allowed = []
    for entry in settings.KEYWARD_KMIP_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            slug, _, network = entry.partition(":")
            if slug == tenant.slug:
                allowed.append(network)
        else:
            allowed.append(entry)
    return tuple(allowed)


def saved_azure_method(tenant: Tenant) -> str | None:
    """How the saved Azure registration signs in ("secret" or "certificate"), if saved."""
    source = draft_source(tenant, SourceKind.AZURE_KEYVAULT)
    if source is None or not source.sealed_credentials:
        return None
    return str(source.config.get("auth_method") or "") or None


def uploaded_material(version: KekVersion) -> bytes:
    """The plaintext of an uploaded key version, for the provider only."""
    stored = bytes(version.material or b"")
    if not stored:
        raise MaterialDestroyed(version.provider_version)
    if version.material_expires_at is not None and version.material_expires_at <= timezone.now():
        raise MaterialDestroyed(version.provider_version)
    return unseal(purpose=UPLOADED_KEY, owner=str(version.pk), sealed=unpacked(stored))
