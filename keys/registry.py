"""Build the provider for a key source. The one place that maps kinds to classes."""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import DatabaseError

from keys.circuit import CircuitSettings, circuit_for, guarded
from keys.credentials import credentials_of
from keys.models import KekVersion, KeySource, SourceKind
from keys.providers.aws_kms import AwsKmsConfig, AwsKmsProvider
from keys.providers.base import KeyProvider
from keys.providers.uploaded import MaterialUnavailable, UploadedKeyProvider
from keys.rootkey import local_provider, root_key_file
from keys.selectors.sources import kmip_allowed_networks, uploaded_material
from keys.usage import counted

_providers_lock = threading.Lock()
_providers: dict[tuple[str, str, str], KeyProvider] = {}


def provider_for(source: KeySource, *, version: str | None = None) -> KeyProvider:
    """The provider of a key source, reused while its configuration is unchanged.

    Reuse keeps clients and assumed-role credentials warm; a changed
    configuration (another digest) builds a new one. Its key-store calls are
    counted for the source's tenant (keys.usage) and go through the circuit of
    the store's endpoint (keys.circuit), which every tenant on it shares.
    """
    tenant_id = str(source.tenant_id)
    if source.kind == SourceKind.LOCAL:
        # One vendor key for every tenant: counted for the tenant asking.
        return counted(local_provider(), tenant_id)
    if source.kind == SourceKind.UPLOADED and source.config.get("store") != "aws_kms":
        # Cheap to build; `version` makes a pending upload the current one (confirm).
        return counted(_uploaded(source, version), tenant_id)
    # The endpoint is part of the key: a provider never outlives the settings it was built with.
    key = (str(source.pk), source.config_digest(), _settings_in_use())
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            circuit = circuit_for(endpoint_of(source), _circuit_settings())
            provider = _providers[key] = guarded(counted(_build(source), tenant_id), circuit)
        return provider


def endpoint_of(source: KeySource) -> str:
    """What a key store's circuit is per: the AWS region (and endpoint), the vault, the
    KMIP server. Tenants on one endpoint share its fate when it goes away."""
    config = source.config
    if source.kind == SourceKind.AWS_KMS or config.get("store") == "aws_kms":
        parts = str(config.get("key_arn", "")).split(":")
        region = parts[3] if len(parts) > 3 else ""
        return f"aws_kms {region} {settings.KEYWARD_AWS_ENDPOINT_URL or 'regional'}"
    if source.kind == SourceKind.AZURE_KEYVAULT:
        return f"azure_keyvault {str(config.get('vault_url', '')).rstrip('/').lower()}"
    if source.kind == SourceKind.KMIP:
        return f"kmip {str(config.get('host', '')).lower()}:{config.get('port', '')}"
    return f"{source.kind} {source.pk}"


def _circuit_settings() -> CircuitSettings:
    return CircuitSettings(
        failures=int(settings.KEYWARD_KEY_STORE_CIRCUIT_FAILURES),
        base=float(settings.KEYWARD_KEY_STORE_BACKOFF_SECONDS),
        ceiling=float(settings.KEYWARD_KEY_STORE_BACKOFF_MAX_SECONDS),
    )


def _settings_in_use() -> str:
    """The settings a provider is built with: a change builds a new one."""
    return repr(
        (
            settings.KEYWARD_AWS_ENDPOINT_URL,
            settings.KEYWARD_AZURE_AUTHORITY_HOST,
            settings.KEYWARD_AZURE_CA_BUNDLE,
            settings.KEYWARD_AZURE_VAULT_SUFFIXES,
            settings.KEYWARD_AZURE_LOOPBACK_VAULT_PORT,
            settings.KEYWARD_KMIP_ALLOWED_NETWORKS,
            settings.KEYWARD_AWS_TIMEOUT_SECONDS,
            settings.KEYWARD_AZURE_TIMEOUT_SECONDS,
            settings.KEYWARD_KMIP_TIMEOUT_SECONDS,
            _circuit_settings(),
        )
    )


def _uploaded(source: KeySource, version: str | None = None) -> KeyProvider:
    def material(version: str) -> bytes:
        try:
            row = KekVersion.objects.get(source=source, provider_version=version)
        except KekVersion.DoesNotExist:
            raise KeyError(version) from None
        except DatabaseError as exc:
            raise MaterialUnavailable(type(exc).__name__) from None
        return uploaded_material(row)

    current = version or str(source.config.get("version") or "upload-1")
    return UploadedKeyProvider(material, current)


def _build(source: KeySource) -> KeyProvider:
    if source.kind == SourceKind.AWS_KMS or source.config.get("store") == "aws_kms":
        config = AwsKmsConfig(
            key_arn=source.config["key_arn"],
            role_arn=source.config.get("role_arn") or None,
            external_id=source.config.get("external_id") if source.config.get("role_arn") else None,
            allowed_partitions=tuple(settings.KEYWARD_AWS_PARTITIONS),
        )
        timeout = settings.KEYWARD_AWS_TIMEOUT_SECONDS
        return AwsKmsProvider(
            config,
            endpoint_url=settings.KEYWARD_AWS_ENDPOINT_URL,
            connect_timeout=timeout,
            read_timeout=timeout,
        )
    if source.kind == SourceKind.AZURE_KEYVAULT:
        return _azure(source)
    if source.kind == SourceKind.KMIP:
        return _kmip(source)
    raise NotImplementedError(f"no provider for {source.kind!r}")


def _azure(source: KeySource) -> KeyProvider:
    # The Azure SDK takes most of a second to import: only processes serving a
    # tenant with an Azure key load it.
    from keys.providers.azure_keyvault import (  # noqa: PLC0415
        AzureCredentials,
        AzureKeyVaultConfig,
        AzureKeyVaultProvider,
    )
    from keys.providers.azure_keyvault.wrapping import (  # noqa: PLC0415
        ORIGIN_PURPOSE as AZURE_ORIGIN_PURPOSE,
    )

    config = source.config
    secrets = credentials_of(source)
    certificate = secrets.get("client_certificate_pem")
    return AzureKeyVaultProvider(
        AzureKeyVaultConfig(
            vault_url=config["vault_url"],
            key_name=config["key_name"],
            tenant_id=config["tenant_id"],
            client_id=config["client_id"],
            key_version=config.get("key_version") or None,
            allowed_suffixes=tuple(settings.KEYWARD_AZURE_VAULT_SUFFIXES),
            allow_loopback_port=settings.KEYWARD_AZURE_LOOPBACK_VAULT_PORT or None,
        ),
        AzureCredentials(
            client_secret=secrets.get("client_secret"),
            client_certificate_pem=certificate.encode() if certificate else None,
        ),
        authority_host=settings.KEYWARD_AZURE_AUTHORITY_HOST or None,
        connection_verify=settings.KEYWARD_AZURE_CA_BUNDLE or True,
        timeout=float(settings.KEYWARD_AZURE_TIMEOUT_SECONDS),
        # Key Vault wraps with a public key: Keyward signs what it wraps with a
        # key derived from its root key, and refuses blobs it did not sign once
        # the source's older, unsigned blobs are rewrapped.
        origin=root_key_file().origin_keys(AZURE_ORIGIN_PURPOSE),
        accept_unsigned=config.get("wraps_signed") != "true",
    )


def _kmip(source: KeySource) -> KeyProvider:
    # PyKMIP takes over a second to import: only processes serving a tenant with
    # a KMIP key load it.
    from keys.providers.kmip import KmipConfig, KmipCredentials, KmipProvider  # noqa: PLC0415

    config = source.config
    secrets = credentials_of(source)
    return KmipProvider(
        KmipConfig(
            host=config["host"],
            port=int(config["port"]),
            key_uid=config.get("key_uid") or None,
            key_name=f"keyward-{source.tenant.slug}",
            username=config.get("username") or None,
            allowed_networks=kmip_allowed_networks(source.tenant),
        ),
        KmipCredentials(
            ca_pem=secrets["ca_pem"].encode(),
            cert_pem=secrets["cert_pem"].encode(),
            key_pem=secrets["key_pem"].encode(),
            passphrase=secrets["passphrase"].encode() if secrets.get("passphrase") else None,
            password=secrets.get("password") or None,
        ),
        timeout=float(settings.KEYWARD_KMIP_TIMEOUT_SECONDS),
        key_cache_seconds=float(source.tenant.dek_cache_ttl),
    )
