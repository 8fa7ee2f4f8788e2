"""The Azure Key Vault provider against the Key Vault test server and its Entra token endpoint."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from cryptography.hazmat.primitives.asymmetric import rsa

from keys.providers.azure_keyvault import (
    CHECK_CREDENTIAL,
    CHECK_ENABLED,
    CHECK_FOUND,
    CHECK_IN_DATE,
    CHECK_NAMES,
    CHECK_OPS,
    CHECK_ROUND_TRIP,
    CHECK_RSA,
    DEFAULT_VAULT_SUFFIXES,
    AzureCredentials,
    AzureKeyVaultConfig,
    AzureKeyVaultProvider,
    InvalidAzureConfig,
    validate_client_certificate,
    validate_client_id,
    validate_client_secret,
    validate_key_name,
    validate_tenant_id,
    validate_vault_url,
)
from keys.providers.azure_keyvault import wrapping as azure_wrapping
from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyUnavailable,
    all_required_passed,
)
from tests.servers.keyvault import KeyVaultServer, certificate_thumbprint, make_client_certificate

# A PEM private-key header, spelled in two parts: no key is stored in this file.
PEM_KEY_BEGIN = b"-----BEGIN " + b"PRIVATE KEY-----"

SECRET = "Qx8~test.secret_value-0123456789abcdefghij"


class VendorOriginKeys:
    """Vendor origin keys as the root key file would derive them (two versions)."""

    def __init__(self) -> None:
        self.keys = {1: os.urandom(32), 2: os.urandom(32)}
        self.version = 1

    def current(self) -> tuple[int, bytes]:
        return self.version, self.keys[self.version]

    def get(self, version: int) -> bytes:
        if version not in self.keys:
            raise KeyMaterialInvalid(f"unknown root key version root-{version}")
        return self.keys[version]


ORIGIN = VendorOriginKeys()
CONTEXT = {"tenant": "acme", "kek": "v1"}


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


@pytest.fixture(scope="module")
def client_pem(rsa_keys: list[rsa.RSAPrivateKey]) -> bytes:
    return make_client_certificate(key=rsa_keys[1])


@pytest.fixture(scope="module")
def server() -> Iterator[KeyVaultServer]:
    with KeyVaultServer() as kv:
        yield kv


@pytest.fixture
def kv(server: KeyVaultServer, rsa_keys: list[rsa.RSAPrivateKey]) -> Iterator[KeyVaultServer]:
    server.reset()
    server.create_key("kek", private_key=rsa_keys[0])
    yield server
    server.reset()


@pytest.fixture
def app_id(kv: KeyVaultServer) -> str:
    return kv.register_app(secret=SECRET).client_id


def make_provider(
    kv: KeyVaultServer,
    client_id: str,
    *,
    key_name: str = "kek",
    secret: str | None = SECRET,
    pem: bytes | None = None,
    tenant_id: str | None = None,
    key_version: str | None = None,
    timeout: float = 1.0,
    credential: Any = None,
    origin: Any = ORIGIN,
    accept_unsigned: bool = False,
) -> AzureKeyVaultProvider:
    config = AzureKeyVaultConfig(
        vault_url=kv.url,
        key_name=key_name,
        tenant_id=tenant_id or kv.tenant_id,
        client_id=client_id,
        key_version=key_version,
        allow_loopback_port=kv.port,
    )
    creds = (
        AzureCredentials(client_certificate_pem=pem)
        if pem is not None
        else AzureCredentials(client_secret=secret)
    )
    return AzureKeyVaultProvider(
        config,
        creds,
        authority_host=kv.authority,
        connection_verify=kv.ca_path,
        timeout=timeout,
        credential=credential,
        origin=origin,
        accept_unsigned=accept_unsigned,
    )


@pytest.fixture
def provider(kv: KeyVaultServer, app_id: str) -> AzureKeyVaultProvider:
    return make_provider(kv, app_id)


def by_name(results: list[Any]) -> dict[str, Any]:
    assert [r.name for r in results] == list(CHECK_NAMES)
    return {r.name: r for r in results}


# -- validation ------------------------------------------------------------------

AZ = DEFAULT_VAULT_SUFFIXES


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://contoso-kv.vault.azure.net", "https://contoso-kv.vault.azure.net"),
        ("https://Contoso-KV.vault.azure.net/", "https://contoso-kv.vault.azure.net"),
        ("https://contoso-kv.vault.azure.net:443/", "https://contoso-kv.vault.azure.net"),
        ("https://hsm01.managedhsm.azure.net", "https://hsm01.managedhsm.azure.net"),
        ("https://kv1.vault.usgovcloudapi.net", "https://kv1.vault.usgovcloudapi.net"),
    ],
)
def test_vault_url_accepted(url: str, expected: str) -> None:
    assert validate_vault_url(url, allowed_suffixes=AZ) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://contoso.vault.azure.net", "https://"),
        ("contoso.vault.azure.net", "https://"),
        ("https://169.254.169.254", "IP address"),
        ("https://169.254.169.254/metadata/instance", "path"),
        ("https://2852039166", "IP address"),
        ("https://0xa9fea9fe", "IP address"),
        ("https://0251.0376.0251.0376", "IP address"),
        ("https://127.1", "IP address"),
        ("https://10.0.0.1:443", "IP address"),
        ("https://[::1]", "IPv6"),
        ("https://[fd00::1]:443", "IPv6"),
        ("https://user:pw@contoso.vault.azure.net", "user name"),
        ("https://contoso.vault.azure.net@evil.example", "user name"),
        ("https://contoso.vault.azure.net:8443", "port"),
        ("https://contoso.vault.azure.net:80", "port"),
        ("https://contoso.vault.azure.net/keys/kek", "path"),
        ("https://contoso.vault.azure.net/?x=1", "query"),
        ("https://contoso.vault.azure.net/#frag", "fragment"),
        ("https://evil-vault.azure.net.example.com", "not an Azure Key Vault host"),
        ("https://xvault.azure.net", "not an Azure Key Vault host"),
        ("https://vault.azure.net", "not an Azure Key Vault host"),
        ("https://evil.example.com", "not an Azure Key Vault host"),
        ("https://a.b.vault.azure.net", "sub-domain"),
        ("https://contoso..vault.azure.net", "empty label"),
        ("https://contoso.vault.azure.net.", "dot"),
        ("https://" + "a" * 64 + ".vault.azure.net", "longer than 63"),
        ("https://" + ".".join(["a" * 60] * 5) + ".vault.azure.net", "too long"),
        ("https://ab.vault.azure.net", "vault name"),
        ("https://contoso%2e.vault.azure.net", "letters, digits"),
        ("https://contoso.vault.azure.net\\@evil", "backslash"),
        ("https://cöntoso.vault.azure.net", "non-ASCII"),
        ("https://localhost", "not an Azure Key Vault host"),
        ("", "enter the vault URL"),
    ],
)
def test_vault_url_refused(url: str, fragment: str) -> None:
    with pytest.raises(InvalidAzureConfig) as exc:
        validate_vault_url(url, allowed_suffixes=AZ)
    assert exc.value.field == "vault_url"
    assert fragment in str(exc.value)


def test_loopback_only_for_the_exact_test_port() -> None:
    assert (
        validate_vault_url("https://127.0.0.1:4443/", allowed_suffixes=AZ, allow_loopback_port=4443)
        == "https://127.0.0.1:4443"
    )
    for url in (
        "https://127.0.0.1:4444",
        "https://127.0.0.1",
        "http://127.0.0.1:4443",
        "https://localhost:4443",
        "https://2130706433:4443",
        "https://user@127.0.0.1:4443",
    ):
        with pytest.raises(InvalidAzureConfig):
            validate_vault_url(url, allowed_suffixes=AZ, allow_loopback_port=4443)
    # A suffix naming an address does not open loopback either.
    with pytest.raises(InvalidAzureConfig, match="IP address"):
        validate_vault_url("https://127.0.0.1", allowed_suffixes=("127.0.0.1", ".0.0.1"))


def test_ids_names_and_secrets() -> None:
    assert validate_key_name("tenant-kek-01") == "tenant-kek-01"
    for bad in ("", "kek_1", "a" * 128, "kek/1", "https://x.vault.azure.net/keys/kek"):
        with pytest.raises(InvalidAzureConfig) as exc:
            validate_key_name(bad)
        assert exc.value.field == "key_name"
    guid = "72F988BF-86F1-41AF-91AB-2D7CD011DB47"
    assert validate_tenant_id(guid) == guid.lower()
    assert validate_client_id(f" {guid} ") == guid.lower()
    with pytest.raises(InvalidAzureConfig, match="not a domain name") as exc:
        validate_tenant_id("contoso.onmicrosoft.com")
    assert exc.value.field == "tenant_id"
    with pytest.raises(InvalidAzureConfig) as exc:
        validate_client_id("not-a-guid")
    assert exc.value.field == "client_id"
    with pytest.raises(InvalidAzureConfig, match="Secret ID"):
        validate_client_secret(guid)
    with pytest.raises(InvalidAzureConfig, match="space"):
        validate_client_secret(SECRET + " ")
    with pytest.raises(InvalidAzureConfig) as exc:
        AzureCredentials()
    with pytest.raises(InvalidAzureConfig):
        AzureCredentials(client_secret=SECRET, client_certificate_pem=b"x")
    assert SECRET not in repr(AzureCredentials(client_secret=SECRET))


def test_config_validates_and_hides_suffixes() -> None:
    config = AzureKeyVaultConfig(
        "https://Contoso-KV.vault.azure.net/",
        "kek",
        "72F988BF-86F1-41AF-91AB-2D7CD011DB47",
        "9b121142-0fb2-4aff-a37f-327d1a286040",
        key_version="0123456789ABCDEF0123456789abcdef",
    )
    assert config.vault_url == "https://contoso-kv.vault.azure.net"
    assert config.key_version == "0123456789abcdef0123456789abcdef"
    assert config.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
    with pytest.raises(InvalidAzureConfig) as exc:
        AzureKeyVaultConfig("https://169.254.169.254", "kek", config.tenant_id, config.client_id)
    assert exc.value.field == "vault_url"
    with pytest.raises(InvalidAzureConfig) as exc:
        AzureKeyVaultConfig(config.vault_url, "kek", config.tenant_id, config.client_id, "v1")
    assert exc.value.field == "key_version"


def test_client_certificate_validation(
    rsa_keys: list[rsa.RSAPrivateKey], client_pem: bytes
) -> None:
    assert validate_client_certificate(client_pem) == certificate_thumbprint(client_pem)
    assert len(validate_client_certificate(client_pem)) == 40
    cert_only = client_pem.split(PEM_KEY_BEGIN)[0]
    key_only = client_pem[len(cert_only) :]
    other = make_client_certificate(key=rsa_keys[0])
    now = dt.datetime.now(dt.UTC)
    expired = make_client_certificate(
        key=rsa_keys[1],
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    cases = {
        b"": "upload a PEM",
        cert_only: "no private key",
        key_only: "no certificate",
        other.split(PEM_KEY_BEGIN)[0] + key_only: "does not belong",
        expired: "expired on",
        client_pem.replace(b"PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"): "encrypted",
    }
    for pem, fragment in cases.items():
        with pytest.raises(InvalidAzureConfig, match=fragment) as exc:
            validate_client_certificate(pem)
        assert exc.value.field == "client_certificate"
    with pytest.raises(InvalidAzureConfig, match="not valid before"):
        validate_client_certificate(client_pem, now=now - dt.timedelta(days=1))


# -- Save and Test, wrap and unwrap ----------------------------------------------


def test_checks_pass_and_tokens_come_from_entra(
    kv: KeyVaultServer, provider: AzureKeyVaultProvider, app_id: str
) -> None:
    results = provider.run_checks(CONTEXT)
    assert all_required_passed(results), results
    assert [r.name for r in results] == list(CHECK_NAMES)
    ops = [r.op for r in kv.requests]
    assert "openid_configuration" in ops and "token" in ops
    assert {t.client_id for t in kv.tokens_issued} == {app_id}
    assert all(r.status != 401 for r in kv.requests if r.op == "unwrapkey")
    assert SECRET not in repr(provider.describe())
    facts = provider.describe().facts
    assert facts["Application (client) ID"] == app_id
    assert facts["Credential"] == "client secret"


def test_round_trip_and_blob_binding(kv: KeyVaultServer, provider: AzureKeyVaultProvider) -> None:
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CONTEXT)
    assert wrapped.version == kv.get_version("kek").version
    assert len(wrapped.blob) == 1 + 4 + 256 + 32 + 32 and wrapped.blob[:1] == b"\x02"
    assert kv.unwrap_locally("kek", wrapped.version, wrapped.blob[5:-64]) == dek
    assert provider.unwrap(wrapped.blob, CONTEXT, wrapped.version) == dek
    with pytest.raises(KeyMaterialInvalid, match="context"):
        provider.unwrap(wrapped.blob, {**CONTEXT, "tenant": "other"}, wrapped.version)
    tag_flipped = wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1])
    with pytest.raises(KeyMaterialInvalid):
        provider.unwrap(tag_flipped, CONTEXT, wrapped.version)
    rsa_flipped = wrapped.blob[:10] + bytes([wrapped.blob[10] ^ 1]) + wrapped.blob[11:]
    with pytest.raises(KeyMaterialInvalid):  # the origin MAC refuses it first
        provider.unwrap(rsa_flipped, CONTEXT, wrapped.version)
    for blob in (b"", b"\x03" + wrapped.blob[1:], b"\x01" + wrapped.blob[1:], wrapped.blob[:-1]):
        with pytest.raises(KeyMaterialInvalid):
            provider.unwrap(blob, CONTEXT, wrapped.version)
    with pytest.raises(KeyMaterialInvalid):
        provider.unwrap(wrapped.blob, CONTEXT, "not-a-version")
    for bad_dek in (b"", os.urandom(16), os.urandom(33)):
        with pytest.raises(KeyMaterialInvalid, match="32 bytes"):
            provider.wrap(bad_dek, CONTEXT)


def _forged(provider: AzureKeyVaultProvider, dek: bytes, version: str) -> bytes:
    """An RSA-OAEP-256 wrap of `dek` made with the key's public half alone, as anyone
    who can read the public key (and write the database) could make it."""
    from azure.keyvault.keys.crypto import CryptographyClient

    public = CryptographyClient.from_jwk(provider._get_key(version).key)
    return bytes(public.wrap_key(azure_wrapping.ALG, dek).encrypted_key)


def test_a_blob_made_from_the_public_key_alone_is_refused_before_key_vault(
    kv: KeyVaultServer, app_id: str, provider: AzureKeyVaultProvider
) -> None:
    dek = os.urandom(32)
    version = provider.current_version()
    ciphertext = _forged(provider, dek, version)
    context = azure_wrapping.encoded_context(CONTEXT)
    unsigned = b"\x01" + ciphertext + azure_wrapping.tag_for(dek, context, ciphertext)
    signed_body = (
        b"\x02"
        + (1).to_bytes(4, "big")
        + ciphertext
        + azure_wrapping.tag_v2(dek, context, ciphertext)
    )
    guessed_origin = signed_body + os.urandom(32)
    other_vendor = signed_body + azure_wrapping.origin_mac(os.urandom(32), context, signed_body)
    before = len(kv.requests_for("unwrapkey"))
    for forged in (unsigned, guessed_origin, other_vendor):
        with pytest.raises(KeyMaterialInvalid, match="not a DEK wrapped by Keyward"):
            provider.unwrap(forged, CONTEXT, version)
    assert len(kv.requests_for("unwrapkey")) == before  # refused without asking Key Vault
    # While a source still has blobs from before signing, version 1 reads (and is
    # marked for rewrapping); once they are rewrapped, it never does again.
    legacy = make_provider(kv, app_id, accept_unsigned=True)
    assert legacy.unwrap(unsigned, CONTEXT, version) == dek
    assert legacy.needs_rewrap(unsigned)
    rewrapped = legacy.rewrap(unsigned, CONTEXT, version)
    assert rewrapped[:1] == b"\x02" and not legacy.needs_rewrap(rewrapped)
    assert provider.unwrap(rewrapped, CONTEXT, version) == dek  # the strict reader takes it
    with pytest.raises(KeyMaterialInvalid, match="not a DEK wrapped by Keyward"):
        legacy.rewrap(guessed_origin, CONTEXT, version)  # a forgery is not laundered


def test_blobs_follow_the_vendor_key_version(
    kv: KeyVaultServer, provider: AzureKeyVaultProvider
) -> None:
    dek = os.urandom(32)
    first = provider.wrap(dek, CONTEXT)
    assert not provider.needs_rewrap(first.blob)
    assert provider.vendor_root_version(first.blob) == 1
    ORIGIN.version = 2
    try:
        assert provider.vendor_root_version(first.blob) == 1  # no longer current
        assert provider.unwrap(first.blob, CONTEXT, first.version) == dek  # still verifies
        second = provider.wrap(dek, CONTEXT)
        assert second.blob[1:5] == (2).to_bytes(4, "big")
        assert provider.vendor_root_version(second.blob) == 2
        # Signing again under the new version needs no Key Vault call, and keeps
        # the wrapped DEK (ciphertext and tag) as it was.
        before = len(kv.requests_for("unwrapkey"))
        resigned = provider.resign(first.blob, CONTEXT)
        assert len(kv.requests_for("unwrapkey")) == before
        assert provider.vendor_root_version(resigned) == 2
        assert resigned[5:-32] == first.blob[5:-32]
        assert provider.unwrap(resigned, CONTEXT, first.version) == dek
        with pytest.raises(KeyMaterialInvalid, match="not a DEK wrapped by Keyward"):
            provider.resign(first.blob[:-1] + bytes([first.blob[-1] ^ 1]), CONTEXT)
        retired = ORIGIN.keys.pop(1)
        with pytest.raises(KeyMaterialInvalid, match="unknown root key version"):
            provider.unwrap(first.blob, CONTEXT, first.version)
        ORIGIN.keys[1] = retired
    finally:
        ORIGIN.version = 1


def test_new_version_keeps_old_blobs_and_health_reports_it(
    kv: KeyVaultServer, provider: AzureKeyVaultProvider, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    old = kv.get_version("kek").version
    dek = os.urandom(32)
    wrapped = provider.wrap(dek, CONTEXT)
    assert provider.health().version == old
    new = kv.add_version("kek", private_key=rsa_keys[1]).version
    health = provider.health()
    assert health.usable and health.version == new
    assert provider.current_version() == new
    assert provider.unwrap(wrapped.blob, CONTEXT, old) == dek
    assert kv.requests_for("unwrapkey")[-1].key_version == old
    assert provider.wrap(dek, CONTEXT).version == new


def test_pinned_version(kv: KeyVaultServer, app_id: str, rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    old = kv.get_version("kek").version
    new = kv.add_version("kek", private_key=rsa_keys[1]).version
    pinned = make_provider(kv, app_id, key_version=old)
    assert pinned.current_version() == old
    assert pinned.wrap(os.urandom(32), CONTEXT).version == old
    assert all_required_passed(pinned.run_checks(CONTEXT))
    health = pinned.health()
    assert health.usable and health.version == new  # the key's current version
    kv.disable_key("kek", old)
    health = pinned.health()
    assert not health.usable and "disabled" in health.detail


def test_certificate_credential(kv: KeyVaultServer, client_pem: bytes) -> None:
    app = kv.register_app(certificate=client_pem)
    provider = make_provider(kv, app.client_id, pem=client_pem)
    assert all_required_passed(provider.run_checks(CONTEXT))
    assert provider.describe().facts["Certificate thumbprint"] == certificate_thumbprint(client_pem)
    # A certificate the app registration does not have is refused by Entra.
    stranger = make_provider(kv, kv.register_app(secret="x" * 40).client_id, pem=client_pem)
    result = by_name(stranger.run_checks(CONTEXT))[CHECK_CREDENTIAL]
    assert not result.passed and "AADSTS700027" in result.message
    assert "Certificates & secrets" in result.message


# -- credentials refused ---------------------------------------------------------


def test_wrong_client_secret(kv: KeyVaultServer, app_id: str) -> None:
    provider = make_provider(kv, app_id, secret="wrong-secret-value")
    results = by_name(provider.run_checks(CONTEXT))
    failed = results[CHECK_CREDENTIAL]
    assert not failed.passed
    assert "AADSTS7000215" in failed.message and "invalid client secret" in failed.message.lower()
    assert "Certificates & secrets" in failed.message and "expired" in failed.message
    assert results[CHECK_FOUND].message.startswith("not run: ")
    assert not any(r.op == "unwrapkey" for r in kv.requests)
    body = b"\x02" + (1).to_bytes(4, "big") + b"x" * 288  # signed by us: reaches Key Vault
    signed = body + azure_wrapping.origin_mac(
        ORIGIN.get(1), azure_wrapping.encoded_context(CONTEXT), body
    )
    with pytest.raises(KeyAccessDenied, match="AADSTS7000215"):
        provider.unwrap(signed, CONTEXT, "0" * 32)
    tokens = [r for r in kv.requests if r.op == "token"]
    assert tokens and all(r.status == 401 for r in tokens)


def test_unknown_app_and_unknown_tenant(kv: KeyVaultServer, app_id: str) -> None:
    stranger = make_provider(kv, "11111111-2222-3333-4444-555555555555")
    failed = by_name(stranger.run_checks(CONTEXT))[CHECK_CREDENTIAL]
    assert "AADSTS700016" in failed.message and "not registered" in failed.message
    lost = make_provider(kv, app_id, tenant_id="99999999-2222-3333-4444-555555555555")
    failed = by_name(lost.run_checks(CONTEXT))[CHECK_CREDENTIAL]
    assert not failed.passed and "does not know the directory" in failed.message


def test_vault_in_another_tenant(kv: KeyVaultServer) -> None:
    other_tenant = "99999999-2222-3333-4444-555555555555"
    app = kv.register_app(secret=SECRET, tenant_id=other_tenant)
    provider = make_provider(kv, app.client_id, tenant_id=other_tenant)
    results = by_name(provider.run_checks(CONTEXT))
    assert results[CHECK_CREDENTIAL].passed
    assert not results[CHECK_FOUND].passed
    assert f"belongs to directory (tenant) {kv.tenant_id}" in results[CHECK_FOUND].message


def test_entra_unavailable(kv: KeyVaultServer, app_id: str) -> None:
    kv.fail(503, "token")
    provider = make_provider(kv, app_id)
    started = time.monotonic()
    result = by_name(provider.run_checks(CONTEXT))[CHECK_CREDENTIAL]
    assert not result.passed and "Microsoft Entra ID" in result.message
    assert "try again" in result.message
    assert time.monotonic() - started < 10
    with pytest.raises(KeyUnavailable):
        provider.current_version()


# -- the key refused or unusable -------------------------------------------------


def test_disabled_key(kv: KeyVaultServer, provider: AzureKeyVaultProvider) -> None:
    wrapped = provider.wrap(os.urandom(32), CONTEXT)
    kv.disable_key("kek")
    health = provider.health()
    assert not health.usable and "disabled" in health.detail
    with pytest.raises(KeyAccessDenied, match="disabled"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    with pytest.raises(KeyAccessDenied, match="disabled"):
        provider.wrap(os.urandom(32), CONTEXT)
    results = by_name(provider.run_checks(CONTEXT))
    assert not results[CHECK_ENABLED].passed
    assert "--enabled true" in results[CHECK_ENABLED].message
    assert results[CHECK_ROUND_TRIP].message.startswith("not run: ")


def test_deleted_key(kv: KeyVaultServer, provider: AzureKeyVaultProvider) -> None:
    wrapped = provider.wrap(os.urandom(32), CONTEXT)
    kv.delete_key("kek")
    with pytest.raises(KeyAccessDenied, match="not found"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    health = provider.health()
    assert not health.usable and "deleted" in health.detail
    result = by_name(provider.run_checks(CONTEXT))[CHECK_FOUND]
    assert not result.passed and "Key not found" in result.message


def test_access_denied_gives_rbac_advice(
    kv: KeyVaultServer, provider: AzureKeyVaultProvider, app_id: str
) -> None:
    wrapped = provider.wrap(os.urandom(32), CONTEXT)
    kv.deny_app(app_id)
    with pytest.raises(KeyAccessDenied, match="Crypto Service Encryption User"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    with pytest.raises(KeyAccessDenied):
        provider.health()
    result = by_name(provider.run_checks(CONTEXT))[CHECK_FOUND]
    assert "Key Vault Crypto Service Encryption User" in result.message
    assert "Get, Wrap Key, Unwrap Key" in result.message
    kv.deny_app(app_id, False)
    kv.fail(403, "unwrapkey")
    result = by_name(provider.run_checks(CONTEXT))[CHECK_ROUND_TRIP]
    assert not result.passed and "Key Vault Crypto Service Encryption User" in result.message


def test_ec_key_fails_the_rsa_check(kv: KeyVaultServer, app_id: str) -> None:
    kv.create_key("eckey", kty="EC", key_ops=["sign", "verify", "wrapKey", "unwrapKey"])
    provider = make_provider(kv, app_id, key_name="eckey")
    results = by_name(provider.run_checks(CONTEXT))
    assert not results[CHECK_RSA].passed
    assert "create an RSA or RSA-HSM key of 2048, 3072 or 4096 bits" in results[CHECK_RSA].message
    assert results[CHECK_ROUND_TRIP].message.startswith("not run: ")
    with pytest.raises(KeyMaterialInvalid):
        provider.wrap(os.urandom(32), CONTEXT)


def test_small_rsa_key_fails_the_rsa_check(kv: KeyVaultServer, app_id: str) -> None:
    kv.create_key("small", size=1024)
    result = by_name(make_provider(kv, app_id, key_name="small").run_checks(CONTEXT))[CHECK_RSA]
    assert not result.passed and "1024 bits" in result.message


def test_key_without_unwrap(
    kv: KeyVaultServer, app_id: str, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    kv.create_key("wraponly", private_key=rsa_keys[0], key_ops=["wrapKey", "encrypt"])
    provider = make_provider(kv, app_id, key_name="wraponly")
    result = by_name(provider.run_checks(CONTEXT))[CHECK_OPS]
    assert not result.passed and "unwrapKey" in result.message
    assert "--ops wrapKey unwrapKey" in result.message
    assert not provider.health().usable


def test_expired_and_not_yet_valid_key(
    kv: KeyVaultServer, app_id: str, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    now = int(time.time())
    kv.create_key("old", private_key=rsa_keys[0], exp=now - 86400)
    provider = make_provider(kv, app_id, key_name="old")
    result = by_name(provider.run_checks(CONTEXT))[CHECK_IN_DATE]
    when = dt.datetime.fromtimestamp(now - 86400, dt.UTC).strftime("%Y-%m-%d")
    assert not result.passed and f"expired on {when}" in result.message
    assert not provider.health().usable
    with pytest.raises(KeyAccessDenied, match="expired"):
        provider.wrap(os.urandom(32), CONTEXT)
    kv.create_key("future", private_key=rsa_keys[0], nbf=now + 86400)
    result = by_name(make_provider(kv, app_id, key_name="future").run_checks(CONTEXT))[
        CHECK_IN_DATE
    ]
    assert not result.passed and "not valid before" in result.message


# -- Key Vault unavailable -------------------------------------------------------


def test_throttled_and_server_errors(kv: KeyVaultServer, provider: AzureKeyVaultProvider) -> None:
    wrapped = provider.wrap(os.urandom(32), CONTEXT)
    kv.fail(429, retry_after=30)  # longer than the provider waits: not retried
    started = time.monotonic()
    with pytest.raises(KeyUnavailable, match="throttling"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    assert time.monotonic() - started < 5
    kv.reset_faults()
    kv.fail(429, "unwrapkey", times=1, retry_after=1)  # a short Retry-After is waited for
    assert len(provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)) == 32
    kv.fail(500)
    started = time.monotonic()
    with pytest.raises(KeyUnavailable, match="500"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    with pytest.raises(KeyUnavailable):
        provider.health()
    result = by_name(provider.run_checks(CONTEXT))[CHECK_FOUND]
    assert not result.passed and "answered an error" in result.message
    assert "try again" in result.message
    assert time.monotonic() - started < 15
    assert len(kv.requests_for("unwrapkey")) >= 3  # retried, boundedly


def test_stalled_vault(kv: KeyVaultServer, provider: AzureKeyVaultProvider) -> None:
    wrapped = provider.wrap(os.urandom(32), CONTEXT)
    kv.stall(30, "unwrapkey")
    started = time.monotonic()
    with pytest.raises(KeyUnavailable, match="could not be reached"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    assert time.monotonic() - started < 4  # timeout=1; POST is not retried after a read timeout
    kv.reset_faults()
    kv.stall(30)
    started = time.monotonic()
    results = by_name(provider.run_checks(CONTEXT))
    assert time.monotonic() - started < 8
    assert not results[CHECK_FOUND].passed
    assert "could not be reached" in results[CHECK_FOUND].message
    assert "try again" in results[CHECK_FOUND].message
    kv.reset_faults()


def test_unreachable_vault(kv: KeyVaultServer, app_id: str) -> None:
    provider = make_provider(kv, app_id)
    with KeyVaultServer() as gone:
        port = gone.port
    config = AzureKeyVaultConfig(
        f"https://127.0.0.1:{port}", "kek", kv.tenant_id, app_id, allow_loopback_port=port
    )
    lost = AzureKeyVaultProvider(
        config,
        AzureCredentials(client_secret=SECRET),
        authority_host=kv.authority,
        connection_verify=kv.ca_path,
        timeout=1,
        origin=ORIGIN,
    )
    started = time.monotonic()
    with pytest.raises(KeyUnavailable):
        lost.current_version()
    assert time.monotonic() - started < 10
    assert provider.current_version()


# -- an injected credential (error mapping only) ---------------------------------


class FailingCredential:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise self.error


def test_injected_credential_errors_map(kv: KeyVaultServer, app_id: str) -> None:
    refused = make_provider(
        kv,
        app_id,
        credential=FailingCredential(
            ClientAuthenticationError("Authentication failed: AADSTS7000222: secret expired")
        ),
    )
    with pytest.raises(KeyAccessDenied, match="AADSTS7000222"):
        refused.current_version()
    vague = make_provider(
        kv, app_id, credential=FailingCredential(ClientAuthenticationError("something odd"))
    )
    with pytest.raises(KeyUnavailable):
        vague.current_version()
