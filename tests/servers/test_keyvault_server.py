"""The real azure-keyvault-keys SDK against the fake Key Vault server."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.servers.keyvault import (
    FakeCredential,
    KeyVaultServer,
    certificate_thumbprint,
    make_client_certificate,
)


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    # Generated once per module: RSA-2048 generation is the slow part.
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def server() -> Iterator[KeyVaultServer]:
    with KeyVaultServer() as kv:
        yield kv


@pytest.fixture
def kv(server: KeyVaultServer) -> Iterator[KeyVaultServer]:
    server.reset()
    yield server
    server.reset()


def client_kwargs(kv: KeyVaultServer, **extra: Any) -> dict[str, Any]:
    return {
        "verify_challenge_resource": False,
        "connection_verify": kv.ca_path,
        "retry_total": 0,
        **extra,
    }


def key_client(kv: KeyVaultServer, **extra: Any) -> KeyClient:
    return KeyClient(kv.url, FakeCredential(), **client_kwargs(kv, **extra))


def crypto_client(kv: KeyVaultServer, key: Any, **extra: Any) -> CryptographyClient:
    return CryptographyClient(key, FakeCredential(), **client_kwargs(kv, **extra))


def modulus(key: Any) -> bytes:
    return bytes(key.key.n)


def modulus_of(private_key: Any) -> bytes:
    return int(private_key.public_key().public_numbers().n).to_bytes(256, "big")


def test_get_key_latest_with_challenge(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    created = kv.create_key("kek", private_key=rsa_keys[0])
    key = key_client(kv).get_key("kek")
    assert key.name == "kek"
    assert key.properties.version == created.version
    assert key.id == f"{kv.url}/keys/kek/{created.version}"
    assert key.key_type == "RSA"
    assert "unwrapKey" in key.key_operations
    assert key.properties.enabled is True
    assert key.properties.recovery_level == "Recoverable+Purgeable"
    assert modulus(key) == modulus_of(rsa_keys[0])
    # First an anonymous request answered by the 401 challenge, then the bearer retry.
    gets = [r for r in kv.requests if r.op == "get"]
    assert gets[-1].authorized and gets[-1].status == 200
    assert gets[-1].path == "/keys/kek/"
    assert "api-version" in gets[-1].query


def test_unauthenticated_request_gets_challenge(kv: KeyVaultServer) -> None:
    response = requests.get(f"{kv.url}/keys/x/?api-version=7.5", verify=kv.ca_path, timeout=5)
    assert response.status_code == 401
    assert 'resource="https://vault.azure.net"' in response.headers["WWW-Authenticate"]
    assert "login.microsoftonline.com/" in response.headers["WWW-Authenticate"]


def test_required_token(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    kv.require_token("right")
    client = KeyClient(kv.url, FakeCredential("right"), **client_kwargs(kv))
    assert client.get_key("kek").name == "kek"
    wrong = KeyClient(kv.url, FakeCredential("wrong"), **client_kwargs(kv))
    with pytest.raises(HttpResponseError) as exc:
        wrong.get_key("kek")
    assert exc.value.status_code == 401


def test_wrap_unwrap_round_trip(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    key = key_client(kv).get_key("kek")
    crypto = crypto_client(kv, key)
    dek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek)
    assert wrapped.key_id == key.id
    assert kv.unwrap_locally("kek", key.properties.version, wrapped.encrypted_key) == dek
    result = crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert result.key == dek
    unwraps = kv.requests_for("unwrapkey")
    assert len(unwraps) == 1 and unwraps[0].status == 200
    assert unwraps[0].body["alg"] == "RSA-OAEP-256"


def test_remote_wrap_by_key_id_when_get_forbidden(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    created = kv.create_key("kek", private_key=rsa_keys[0])
    kv.fail(403, "get")
    crypto = crypto_client(kv, kv.kid("kek"))
    dek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek)
    assert len(kv.requests_for("wrapkey")) == 1
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == dek
    assert wrapped.key_id == f"{kv.url}/keys/kek/{created.version}"


def test_specific_version_and_list_versions(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    v1 = kv.create_key("kek", private_key=rsa_keys[0])
    v2 = kv.add_version("kek", private_key=rsa_keys[1])
    client = key_client(kv)
    assert client.get_key("kek").properties.version == v2.version
    old = client.get_key("kek", version=v1.version)
    assert old.properties.version == v1.version
    assert modulus(old) == modulus_of(rsa_keys[0])
    versions = {p.version for p in client.list_properties_of_key_versions("kek")}
    assert versions == {v1.version, v2.version}
    # A blob wrapped with v1 still unwraps through v1 after rotation.
    crypto = crypto_client(kv, old)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"k" * 32
    with pytest.raises(ResourceNotFoundError):
        client.get_key("kek", version="0" * 32)


def test_update_properties(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    client = key_client(kv)
    exp = int(time.time()) + 3600
    updated = client.update_key_properties(
        "kek", enabled=False, expires_on=datetime.fromtimestamp(exp, UTC)
    )
    assert updated.properties.enabled is False
    assert updated.properties.expires_on is not None
    assert int(updated.properties.expires_on.timestamp()) == exp
    assert kv.get_version("kek").enabled is False


def test_disabled_key_unwrap_forbidden(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    key = key_client(kv).get_key("kek")
    crypto = crypto_client(kv, key)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"d" * 32)
    kv.disable_key("kek")
    with pytest.raises(HttpResponseError) as exc:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert exc.value.status_code == 403
    assert "disabled" in str(exc.value.message)
    kv.enable_key("kek")
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == b"d" * 32


def test_missing_unwrap_permission_on_key(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0], key_ops=["wrapKey"])
    crypto = crypto_client(kv, key_client(kv).get_key("kek"))
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"p" * 32)
    with pytest.raises(HttpResponseError) as exc:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert exc.value.status_code == 403


def test_ec_key_refused_for_rsa_unwrap(kv: KeyVaultServer) -> None:
    kv.create_key("eckey", kty="EC", key_ops=["wrapKey", "unwrapKey", "sign", "verify"])
    key = key_client(kv).get_key("eckey")
    assert key.key_type == "EC"
    crypto = crypto_client(kv, key)
    with pytest.raises(HttpResponseError) as exc:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"x" * 256)
    assert exc.value.status_code == 400


def test_deleted_key_not_found(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    key = key_client(kv).get_key("kek")
    crypto = crypto_client(kv, key)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"z" * 32)
    kv.delete_key("kek")
    with pytest.raises(ResourceNotFoundError):
        key_client(kv).get_key("kek")
    with pytest.raises(ResourceNotFoundError):
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)


def test_forced_429_with_retry_after(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    kv.fail(429, retry_after=7)
    with pytest.raises(HttpResponseError) as exc:
        key_client(kv).get_key("kek")
    assert exc.value.status_code == 429
    response: Any = exc.value.response
    assert response.headers["Retry-After"] == "7"


def test_forced_500_once_then_ok(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    kv.fail(500, "get", times=1)
    client = key_client(kv)
    with pytest.raises(HttpResponseError) as exc:
        client.get_key("kek")
    assert exc.value.status_code == 500
    assert client.get_key("kek").name == "kek"


def test_stall_times_out(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    kv.stall(30, "get")
    client = key_client(kv, connection_timeout=1, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises((ServiceResponseError, ServiceRequestError)):
        client.get_key("kek")
    assert time.monotonic() - started < 10  # the read timeout, well before the 30 s stall
    kv.reset_faults()  # releases the stalled handler
    assert client.get_key("kek").name == "kek"


# -- the Entra ID token endpoint ---------------------------------------------------


def entra_kwargs(kv: KeyVaultServer) -> dict[str, Any]:
    return {
        "authority": kv.authority,
        "disable_instance_discovery": True,
        "connection_verify": kv.ca_path,
        "retry_total": 0,
    }


def test_entra_secret_token_is_required_by_the_vault(
    kv: KeyVaultServer, rsa_keys: list[Any]
) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    app = kv.register_app(secret="right-secret")
    credential = ClientSecretCredential(
        kv.tenant_id, app.client_id, "right-secret", **entra_kwargs(kv)
    )
    client = KeyClient(kv.url, credential, **client_kwargs(kv))
    assert client.get_key("kek").name == "kek"
    assert [r.op for r in kv.requests if r.op in ("openid_configuration", "token")] == [
        "openid_configuration",
        "token",
    ]
    token_request = kv.requests_for("token")[0]
    assert token_request.body["client_secret"] == "***"
    assert token_request.body["scope"].startswith("https://vault.azure.net/.default")
    assert [t.client_id for t in kv.tokens_issued] == [app.client_id]
    # A token the endpoint did not issue is refused once apps are registered.
    with pytest.raises(HttpResponseError) as exc:
        key_client(kv).get_key("kek")
    assert exc.value.status_code == 401
    kv.expire_tokens()
    with pytest.raises(HttpResponseError) as exc:
        client.get_key("kek")
    assert exc.value.status_code == 401


def test_entra_wrong_secret_unknown_app_and_tenant(kv: KeyVaultServer) -> None:
    app = kv.register_app(secret="right-secret")
    cases = {
        (kv.tenant_id, app.client_id, "wrong"): "AADSTS7000215",
        (kv.tenant_id, "11111111-1111-1111-1111-111111111111", "right-secret"): "AADSTS700016",
        ("22222222-1111-1111-1111-111111111111", app.client_id, "right-secret"): "tenant",
    }
    for (tenant, client_id, secret), fragment in cases.items():
        credential = ClientSecretCredential(tenant, client_id, secret, **entra_kwargs(kv))
        with pytest.raises(ClientAuthenticationError) as exc:
            credential.get_token("https://vault.azure.net/.default")
        assert fragment in str(exc.value.message)
    statuses = {r.status for r in kv.requests if r.op == "token"}
    assert statuses == {400, 401}
    discovery = [r for r in kv.requests if r.op == "openid_configuration"]
    assert 400 in {r.status for r in discovery}


def test_entra_certificate_assertion(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    pem = make_client_certificate(key=rsa_keys[1])
    app = kv.register_app(certificate=pem)
    assert certificate_thumbprint(pem).lower() in app.certificates
    credential = CertificateCredential(
        kv.tenant_id, app.client_id, certificate_data=pem, **entra_kwargs(kv)
    )
    assert KeyClient(kv.url, credential, **client_kwargs(kv)).get_key("kek").name == "kek"
    # Signed by a key whose certificate is not on the app: refused.
    other = make_client_certificate(key=rsa_keys[2])
    stranger = CertificateCredential(
        kv.tenant_id, app.client_id, certificate_data=other, **entra_kwargs(kv)
    )
    with pytest.raises(ClientAuthenticationError) as exc:
        stranger.get_token("https://vault.azure.net/.default")
    assert "AADSTS700027" in str(exc.value.message)


def test_entra_denied_app_and_faults(kv: KeyVaultServer, rsa_keys: list[Any]) -> None:
    kv.create_key("kek", private_key=rsa_keys[0])
    app = kv.register_app(secret="s")
    credential = ClientSecretCredential(kv.tenant_id, app.client_id, "s", **entra_kwargs(kv))
    client = KeyClient(kv.url, credential, **client_kwargs(kv))
    kv.deny_app(app.client_id)
    with pytest.raises(HttpResponseError) as exc:
        client.get_key("kek")
    assert exc.value.status_code == 403
    assert exc.value.error is not None
    assert exc.value.error.innererror["code"] == "ForbiddenByRbac"
    kv.deny_app(app.client_id, False)
    kv.fail(500)  # Key Vault operations only: the token endpoint keeps working
    fresh = ClientSecretCredential(kv.tenant_id, app.client_id, "s", **entra_kwargs(kv))
    assert fresh.get_token("https://vault.azure.net/.default").token
    kv.reset_faults()
    kv.fail(500, "token")
    failing = ClientSecretCredential(kv.tenant_id, app.client_id, "s", **entra_kwargs(kv))
    with pytest.raises(ClientAuthenticationError):
        failing.get_token("https://vault.azure.net/.default")
