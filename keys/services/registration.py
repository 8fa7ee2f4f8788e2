"""Registering an Azure Key Vault key or a KMIP server: validate, then save.

Everything the customer entered is validated before anything is saved (and
before any connection): a refusal names the field, changes nothing, and the
view records it as a failed audit event. Files and secrets left empty keep the
ones saved with the registration; whatever is entered is validated together
with what is kept, then sealed again as one value.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest

from audit.services import Actor
from keys.errors import KeyActionRefused
from keys.models import (
    KeySource,
    SourceKind,
)
from keys.selectors.sources import (
    draft_source,
    kmip_allowed_networks,
    saved_credentials,
)
from keys.services.sources import key_source_register
from tenants.models import Tenant


def azure_register(
    *,
    tenant: Tenant,
    vault_url: str,
    key_name: str,
    tenant_id: str,
    client_id: str,
    auth_method: str,
    credentials: dict[str, str] | None,
    certificate_thumbprint: str,
    actor: Actor,
    request: HttpRequest | None = None,
) -> KeySource:
    """Save an Azure Key Vault registration (fields validated by the form)."""
    config: dict[str, object] = {
        "vault_url": vault_url,
        "key_name": key_name,
        "tenant_id": tenant_id,
        "client_id": client_id,
        "auth_method": auth_method,
        # Every blob a source registered now makes is signed by Keyward: an
        # unsigned one (possible only before signing existed) is never accepted.
        "wraps_signed": "true",
    }
    if auth_method == "certificate":
        if credentials is None:
            existing = draft_source(tenant, SourceKind.AZURE_KEYVAULT)
            certificate_thumbprint = str(
                (existing.config if existing else {}).get("certificate_thumbprint", "")
            )
        config["certificate_thumbprint"] = certificate_thumbprint
    return key_source_register(
        tenant=tenant,
        kind=SourceKind.AZURE_KEYVAULT,
        config=config,
        credentials=credentials,
        actor=actor,
        request=request,
    )


@dataclass(frozen=True)
class KmipEntry:
    """What the KMIP form holds; None for a file or secret left empty."""

    host: str
    port: int
    username: str
    password: str | None
    ca_pem: bytes | None
    cert_pem: bytes | None
    key_pem: bytes | None
    passphrase: str | None


def kmip_register(
    *, tenant: Tenant, entry: KmipEntry, actor: Actor, request: HttpRequest | None = None
) -> KeySource:
    """Validate the server's address and the TLS material together, then save.

    Raises KeyActionRefused naming the field. The host check resolves the
    name but connects nowhere.
    """
    # PyKMIP takes over a second to import: loaded when a KMIP server is registered.
    from keys.providers.kmip import (  # noqa: PLC0415
        InvalidKmipConfig,
        InvalidKmipMaterial,
        validate_client_material,
        validate_host,
    )

    saved = saved_credentials(tenant, SourceKind.KMIP)
    try:
        validate_host(
            entry.host,
            entry.port,
            allowed_networks=kmip_allowed_networks(tenant),
        )
    except InvalidKmipConfig as exc:
        raise KeyActionRefused(str(exc), field="host") from None

    ca = entry.ca_pem or saved.get("ca_pem", "").encode()
    cert = entry.cert_pem or saved.get("cert_pem", "").encode()
    key = entry.key_pem or saved.get("key_pem", "").encode()
    for field, value, what in (
        ("ca_cert", ca, "the CA certificate that signed your KMIP server's certificate"),
        ("client_cert", cert, "the client certificate Keyward presents"),
        ("client_key", key, "the client certificate's private key"),
    ):
        if not value:
            raise KeyActionRefused(f"Upload {what} (PEM).", field=field)
    # A passphrase belongs to a key: a new key needs its own (or none).
    if entry.passphrase is not None:
        passphrase = entry.passphrase
    else:
        passphrase = "" if entry.key_pem else saved.get("passphrase", "")
    try:
        info = validate_client_material(
            ca_pem=ca,
            cert_pem=cert,
            key_pem=key,
            passphrase=passphrase.encode() if passphrase else None,
        )
    except InvalidKmipMaterial as exc:
        raise KeyActionRefused(str(exc), field=exc.field) from None

    password = entry.password if entry.password is not None else saved.get("password", "")
    if password and not entry.username:
        raise KeyActionRefused("A KMIP password needs a username.", field="username")
    entered = any(
        value is not None
        for value in (entry.ca_pem, entry.cert_pem, entry.key_pem, entry.passphrase, entry.password)
    )
    credentials = (
        {
            "ca_pem": ca.decode(),
            "cert_pem": cert.decode(),
            "key_pem": key.decode(),
            "passphrase": passphrase,
            "password": password,
        }
        if entered or not saved
        else None
    )
    config: dict[str, object] = {
        "host": entry.host,
        "port": entry.port,
        "username": entry.username,
        "client_subject": info.subject,
        "client_issuer": info.issuer,
        "client_not_after": info.not_after.isoformat(),
        "client_fingerprint": info.fingerprint_sha256,
        "ca_subject": info.ca_subject,
    }
    return key_source_register(
        tenant=tenant,
        kind=SourceKind.KMIP,
        config=config,
        credentials=credentials,
        actor=actor,
        request=request,
    )
