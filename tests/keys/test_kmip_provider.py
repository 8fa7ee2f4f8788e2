"""The KMIP provider against PyKMIP's server with mutual TLS (started by `make test`)."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyUnavailable,
    all_required_passed,
)
from keys.providers.kmip import (
    CHECK_KEY_ACTIVE,
    CHECK_OPERATIONS,
    CHECK_ROUND_TRIP,
    CHECK_TLS,
    CHECK_VERSIONS,
    InvalidKmipConfig,
    InvalidKmipMaterial,
    KmipConfig,
    KmipCredentials,
    KmipProvider,
    validate_client_material,
    validate_host,
)
from tests.support.kmip import (
    CLIENT_CN,
    ca_cert,
    client_cert,
    client_key,
    enums,
    expired_client_cert,
    expired_client_key,
    kmip_client,
    kmip_settings,
    legacy_cbc_blob,
    no_client_auth_cert,
    no_client_auth_key,
    other_ca_cert,
    other_client_cert,
    other_client_key,
)

# The support client (PyKMIP's own TLS code) makes its context with ssl.PROTOCOL_TLS.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")

# A PEM private-key header, spelled in two parts: no key is stored in this file.
PEM_KEY_BEGIN = b"-----BEGIN " + b"PRIVATE KEY-----"

CONTEXT = {"tenant": "0b6c3f0e-acme", "dek": "7"}
ALL_CHECKS = [CHECK_TLS, CHECK_VERSIONS, CHECK_OPERATIONS, CHECK_ROUND_TRIP]


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def credentials(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: bytes | None = None,
    key_path: str | None = None,
    passphrase: bytes | None = None,
    password: str | None = None,
) -> KmipCredentials:
    return KmipCredentials(
        ca_pem=read(ca or ca_cert()),
        cert_pem=read(cert or client_cert()),
        key_pem=key if key is not None else read(key_path or client_key()),
        passphrase=passphrase,
        password=password,
    )


def make_provider(
    creds: KmipCredentials | None = None,
    *,
    cls: type[KmipProvider] = KmipProvider,
    timeout: float = 5.0,
    key_cache_seconds: float = 300.0,
    resolve: Callable[[str, int], list[str]] | None = None,
    **config: Any,
) -> KmipProvider:
    settings = kmip_settings()
    values: dict[str, Any] = {"host": settings.host, "port": settings.port, "allow_private": True}
    values.update(config)
    return cls(
        KmipConfig(**values),
        creds or credentials(),
        timeout=timeout,
        key_cache_seconds=key_cache_seconds,
        resolve=resolve,
    )


@pytest.fixture
def provider() -> Iterator[KmipProvider]:
    made = make_provider()
    yield made
    made.close()


@pytest.fixture
def keyed() -> Iterator[KmipProvider]:
    """A provider whose configured key exists and is active."""
    uid = make_provider().create_key()
    made = make_provider(key_uid=uid)
    yield made
    made.close()


def key_state(uid: str) -> Any:
    with kmip_client() as client:
        _, attributes = client.get_attributes(uid, ["State"])
        return attributes[0].attribute_value.value


def revoke(uid: str) -> None:
    with kmip_client() as client:
        client.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, uid)


def destroy(uid: str) -> None:
    with kmip_client() as client:
        if key_state(uid) == enums.State.ACTIVE:
            client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        client.destroy(uid)


def encrypted_client_key(passphrase: bytes) -> bytes:
    key = serialization.load_pem_private_key(read(client_key()), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def by_name(results: list[Any]) -> dict[str, Any]:
    return {result.name: result for result in results}


# -- uploads ---------------------------------------------------------------------------


def material(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ca_pem": read(ca_cert()),
        "cert_pem": read(client_cert()),
        "key_pem": read(client_key()),
        "passphrase": None,
    }
    values.update(overrides)
    return values


def test_valid_material_is_described_without_secrets() -> None:
    info = validate_client_material(**material())
    assert f"CN={CLIENT_CN}" in info.subject
    assert info.ca_subject.startswith("CN=")
    assert info.issuer == info.ca_subject
    assert info.not_after > datetime.now(UTC)
    assert len(info.fingerprint_sha256.split(":")) == 32


def test_passphrase_protected_key() -> None:
    key = encrypted_client_key(b"right passphrase")
    info = validate_client_material(**material(key_pem=key, passphrase=b"right passphrase"))
    assert CLIENT_CN in info.subject

    with pytest.raises(InvalidKmipMaterial, match="does not open") as wrong:
        validate_client_material(**material(key_pem=key, passphrase=b"wrong passphrase"))
    assert wrong.value.field == "passphrase"

    with pytest.raises(InvalidKmipMaterial, match="enter its passphrase") as missing:
        validate_client_material(**material(key_pem=key, passphrase=None))
    assert missing.value.field == "passphrase"

    with pytest.raises(InvalidKmipMaterial, match="not encrypted") as needless:
        validate_client_material(**material(passphrase=b"right passphrase"))
    assert needless.value.field == "passphrase"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            lambda: {
                "cert_pem": read(expired_client_cert()),
                "key_pem": read(expired_client_key()),
            },
            "client_cert",
            r"expired on \d{4}-\d\d-\d\d",
        ),
        (
            lambda: {"key_pem": read(other_client_key())},
            "client_key",
            "does not match the client certificate",
        ),
        (
            lambda: {
                "cert_pem": read(no_client_auth_cert()),
                "key_pem": read(no_client_auth_key()),
            },
            "client_cert",
            "clientAuth",
        ),
        (lambda: {"ca_pem": read(client_cert())}, "ca_cert", "not a CA certificate"),
        (lambda: {"ca_pem": b"hello"}, "ca_cert", "not a PEM certificate"),
        (lambda: {"ca_pem": read(client_key())}, "ca_cert", "holds a private key"),
        (lambda: {"cert_pem": b"\x30\x82\x01\x0a"}, "client_cert", "looks like DER"),
        (
            lambda: {"cert_pem": read(client_cert())[:200] + b"\n-----END CERTIFICATE-----\n"},
            "client_cert",
            "could not be parsed",
        ),
        (lambda: {"key_pem": b"garbage"}, "client_key", "not a PEM private key"),
        (lambda: {"key_pem": read(client_cert())}, "client_key", "holds a certificate"),
        (
            lambda: {"key_pem": PEM_KEY_BEGIN + b"\nAAAA\n-----END " + b"PRIVATE KEY-----\n"},
            "client_key",
            "could not be parsed",
        ),
        (lambda: {"ca_pem": b""}, "ca_cert", "empty"),
        (lambda: {"ca_pem": b"x" * 300_000}, "ca_cert", "at most"),
        (lambda: {"key_pem": b"x" * 40_000}, "client_key", "at most"),
    ],
    ids=[
        "expired",
        "key-not-matching",
        "no-client-auth",
        "ca-not-a-ca",
        "ca-garbage",
        "ca-is-a-key",
        "cert-der",
        "cert-truncated",
        "key-garbage",
        "key-is-a-cert",
        "key-damaged",
        "ca-empty",
        "ca-too-large",
        "key-too-large",
    ],
)
def test_bad_uploads_name_the_file(overrides: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidKmipMaterial, match=message) as bad:
        validate_client_material(**material(**overrides()))
    assert bad.value.field == field
    assert isinstance(bad.value, InvalidKmipConfig)


def test_not_yet_valid_certificate() -> None:
    long_ago = datetime(2001, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidKmipMaterial, match="not valid yet") as early:
        validate_client_material(**material(), now=long_ago)
    assert early.value.field == "ca_cert"  # the CA is checked first

    later = datetime.now(UTC) + timedelta(days=365 * 30)
    with pytest.raises(InvalidKmipMaterial, match="expired"):
        validate_client_material(**material(), now=later)


# -- hosts -----------------------------------------------------------------------------


def resolver(*addresses: str) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.mark.parametrize(
    ("host", "port", "resolve", "message"),
    [
        ("127.0.0.1", 5696, None, "loopback"),
        ("10.0.0.1", 5696, None, "private"),
        ("192.168.1.20", 5696, None, "private"),
        ("169.254.169.254", 5696, None, "link-local"),
        ("::1", 5696, None, "loopback"),
        ("::ffff:127.0.0.1", 5696, None, "loopback"),
        ("0.0.0.0", 5696, None, "unspecified"),  # noqa: S104
        ("224.0.0.1", 5696, None, "multicast"),
        ("100.64.0.1", 5696, None, "not publicly routable"),
        ("kmip.example.test", 5696, resolver("127.0.0.1"), "resolves to 127.0.0.1"),
        ("kmip.example.test", 5696, resolver("93.184.216.34", "10.1.2.3"), "10.1.2.3"),
        ("http://kmip.example.com", 5696, None, "without a scheme"),
        ("kmip.example.com/kmip", 5696, None, "without a scheme"),
        ("kmip example.com", 5696, None, "spaces"),
        ("kmip.example.com:5696", 5696, None, "port field"),
        ("-kmip.example.com", 5696, None, "not a valid host name"),
        ("", 5696, None, "enter the KMIP server"),
        ("kmip.example.com", 0, resolver("93.184.216.34"), "1 to 65535"),
        ("kmip.example.com", 70000, resolver("93.184.216.34"), "1 to 65535"),
    ],
)
def test_refused_hosts(host: str, port: int, resolve: Any, message: str) -> None:
    with pytest.raises(InvalidKmipConfig, match=message):
        validate_host(host, port, allow_private=False, resolve=resolve)


def test_unresolvable_host() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(InvalidKmipConfig, match=r"could not resolve 'kmip\.example\.test'"):
        validate_host("kmip.example.test", 5696, allow_private=False, resolve=fails)
    with pytest.raises(InvalidKmipConfig, match="could not resolve"):
        validate_host("kmip.example.test", 5696, allow_private=False, resolve=resolver())


def test_accepted_hosts() -> None:
    validate_host("93.184.216.34", 5696, allow_private=False)
    validate_host("kmip.example.com", 5696, allow_private=False, resolve=resolver("93.184.216.34"))
    validate_host("127.0.0.1", 5696, allow_private=True)
    validate_host("10.0.0.1", 1, allow_private=True)
    validate_host("kmip.corp", 65535, allow_private=True, resolve=resolver("10.0.0.7", "::1"))


def test_operator_allowed_networks() -> None:
    allowed = ("10.20.0.0/16", "fd00::/8")
    validate_host("10.20.3.4", 5696, allow_private=False, allowed_networks=allowed)
    validate_host(
        "kmip.corp",
        5696,
        allow_private=False,
        resolve=resolver("fd00::5"),
        allowed_networks=allowed,
    )
    with pytest.raises(InvalidKmipConfig, match="private"):
        validate_host("10.21.0.1", 5696, allow_private=False, allowed_networks=allowed)
    with pytest.raises(InvalidKmipConfig, match="allowed_networks"):
        KmipConfig(host="kmip.example.com", allowed_networks=("not a network",))
    # The provider honours them on every connection.
    settings = kmip_settings()
    provider = make_provider(allow_private=False, allowed_networks=(f"{settings.host}/32",))
    assert provider.run_checks(CONTEXT)[0].passed


def test_config_is_validated_and_hides_secrets() -> None:
    with pytest.raises(InvalidKmipConfig, match="port"):
        KmipConfig(host="kmip.example.com", port=70000)
    with pytest.raises(InvalidKmipConfig, match="key_name"):
        KmipConfig(host="kmip.example.com", key_name="")
    creds = credentials(passphrase=b"secret passphrase", password="secret password")
    assert "secret" not in repr(creds) and "PRIVATE" not in repr(creds)
    with pytest.raises(InvalidKmipConfig, match="username and password go together"):
        make_provider(creds)  # a password without a username


# -- Save and Test -----------------------------------------------------------------------


def test_checks_pass_against_the_server(provider: KmipProvider) -> None:
    results = provider.run_checks(CONTEXT)
    assert [r.name for r in results] == ALL_CHECKS
    assert all_required_passed(results), results
    checks = by_name(results)
    assert "TLSv1.2" in checks[CHECK_TLS].message
    assert CLIENT_CN in checks[CHECK_TLS].message
    assert "1.2" in checks[CHECK_VERSIONS].message
    assert "Encrypt" in checks[CHECK_OPERATIONS].message
    assert "revoked and destroyed" in checks[CHECK_ROUND_TRIP].message


def test_checks_include_the_configured_key(keyed: KmipProvider) -> None:
    results = keyed.run_checks(CONTEXT)
    assert [r.name for r in results] == [*ALL_CHECKS, CHECK_KEY_ACTIVE]
    assert all_required_passed(results), results

    revoke(keyed.current_version())
    active = by_name(keyed.run_checks(CONTEXT))[CHECK_KEY_ACTIVE]
    assert not active.passed
    assert "compromised" in active.message


def test_wrong_ca_fails_the_tls_check_naming_the_problem() -> None:
    provider = make_provider(credentials(ca=other_ca_cert()))
    results = provider.run_checks(CONTEXT)
    assert [r.name for r in results] == ALL_CHECKS
    tls = results[0]
    assert not tls.passed
    assert tls.message.startswith(
        "The server's certificate was not signed by the CA you uploaded (certificate verify "
        "failed: "  # the server sends its CA too: "self-signed certificate in certificate chain"
    )
    assert all(r.message.startswith("not run: ") for r in results[1:])
    with pytest.raises(KeyUnavailable, match="not signed by the CA"):
        provider.server_info()


@pytest.mark.parametrize(
    ("cert", "key", "alert"),
    [
        (expired_client_cert, expired_client_key, "CERTIFICATE_EXPIRED"),
        (no_client_auth_cert, no_client_auth_key, "UNSUPPORTED_CERTIFICATE"),
    ],
    ids=["expired", "without-clientAuth"],
)
def test_server_refusing_the_client_certificate(cert: Any, key: Any, alert: str) -> None:
    provider = make_provider(credentials(cert=cert(), key_path=key()))
    tls = provider.run_checks(CONTEXT)[0]
    assert not tls.passed
    assert "The server did not accept the client certificate" in tls.message
    assert alert in tls.message


def test_host_name_is_verified_against_the_certificate() -> None:
    # The server's certificate names 127.0.0.1 and localhost only.
    wrong = make_provider(host="kmip.example.test", resolve=resolver("127.0.0.1"))
    tls = wrong.run_checks(CONTEXT)[0]
    assert not tls.passed
    assert "not valid for 'kmip.example.test'" in tls.message

    # The name the certificate holds works; an address that refuses is skipped for the next.
    right = make_provider(host="localhost", resolve=resolver("::1", "127.0.0.1"))
    assert right.run_checks(CONTEXT)[0].passed


def test_the_connected_address_is_checked_again() -> None:
    """DNS rebinding: the name resolved to a public address at Save, to loopback later."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    def rebinding(host: str, port: int) -> list[str]:
        return next(answers, ["127.0.0.1"])

    validate_host("kmip.example.test", 5696, allow_private=False, resolve=rebinding)
    provider = make_provider(host="kmip.example.test", allow_private=False, resolve=rebinding)
    tls = provider.run_checks(CONTEXT)[0]
    assert not tls.passed
    assert "resolves to 127.0.0.1, which is a loopback address" in tls.message
    with pytest.raises(KeyUnavailable, match="loopback"):
        make_provider(
            host="kmip.example.test", allow_private=False, resolve=rebinding, key_uid="1"
        ).wrap(secrets.token_bytes(32), CONTEXT)


def test_closed_port_is_unavailable() -> None:
    provider = make_provider(port=closed_port(), key_uid="1")
    with pytest.raises(KeyUnavailable, match="could not connect"):
        provider.wrap(secrets.token_bytes(32), CONTEXT)
    with pytest.raises(KeyUnavailable):
        provider.health()
    results = provider.run_checks(CONTEXT)
    assert not results[0].passed and "Could not connect" in results[0].message
    assert [r.passed for r in results] == [False] * 5


# -- keys and wrapping -----------------------------------------------------------------


def test_create_key_and_round_trip(provider: KmipProvider) -> None:
    uid = provider.create_key()
    assert key_state(uid) == enums.State.ACTIVE
    with kmip_client() as client:
        _, attributes = client.get_attributes(uid, ["Name", "Cryptographic Length"])
    values = {str(a.attribute_name.value): a.attribute_value for a in attributes}
    assert values["Name"].name_value.value == "keyward"
    assert values["Cryptographic Length"].value == 256

    keyed = make_provider(key_uid=uid)
    assert keyed.current_version() == uid
    dek = secrets.token_bytes(32)
    wrapped = keyed.wrap(dek, CONTEXT)
    assert wrapped.version == uid
    assert len(wrapped.blob) == 1 + 16 + 32 + 32 and wrapped.blob[0] == 3
    assert not keyed.needs_rewrap(wrapped.blob)
    assert keyed.unwrap(wrapped.blob, CONTEXT, uid) == dek
    assert keyed.wrap(dek, CONTEXT).blob != wrapped.blob  # a fresh IV each time
    # Another provider (a restarted process) unwraps with the recorded uid alone.
    assert make_provider().unwrap(wrapped.blob, dict(CONTEXT), uid) == dek
    health = keyed.health()
    assert health.usable and health.version == uid


def test_tampered_blob_or_other_context_is_invalid(keyed: KmipProvider) -> None:
    dek = secrets.token_bytes(32)
    blob = keyed.wrap(dek, CONTEXT).blob
    uid = keyed.current_version()
    for position in (1, 17, 17 + 31, 17 + 32, len(blob) - 1):  # counter, ciphertext, tag
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(KeyMaterialInvalid, match="tampered") as bad:
            keyed.unwrap(bytes(tampered), CONTEXT, uid)
        assert dek.hex() not in str(bad.value)
    with pytest.raises(KeyMaterialInvalid, match="not wrapped under this context"):
        keyed.unwrap(blob, {**CONTEXT, "tenant": "other"}, uid)
    with pytest.raises(KeyMaterialInvalid):
        keyed.unwrap(blob[:-1], CONTEXT, uid)
    with pytest.raises(KeyMaterialInvalid, match="format"):
        keyed.unwrap(b"\x09" + blob[1:], CONTEXT, uid)
    with pytest.raises(KeyMaterialInvalid):
        keyed.unwrap(blob, CONTEXT, "")
    # Under another key of ours: the server decrypts to other bytes, the tag refuses them.
    other = keyed.rotate_now()
    assert other is not None
    with pytest.raises(KeyMaterialInvalid):
        keyed.unwrap(blob, CONTEXT, other)
    assert keyed.unwrap(blob, CONTEXT, uid) == dek


class _Counted:
    """Counts the KMIP operations a provider sends to the real server."""

    def __init__(self, provider: KmipProvider, monkeypatch: pytest.MonkeyPatch) -> None:
        self.operations: list[str] = []
        real = provider._call

        def counted(operation: str, uid: Any, fn: Any, **kwargs: Any) -> Any:
            self.operations.append(operation)
            return real(operation, uid, fn, **kwargs)

        monkeypatch.setattr(provider, "_call", counted)


def test_every_bad_blob_takes_one_server_operation_and_one_answer(
    keyed: KmipProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    dek = secrets.token_bytes(32)
    uid = keyed.current_version()
    legacy = legacy_cbc_blob(keyed, dek, CONTEXT)
    assert keyed.unwrap(legacy, CONTEXT, uid) == dek  # version 1 still reads
    assert keyed.needs_rewrap(legacy)
    rewrapped = keyed.rewrap(legacy, CONTEXT, uid)
    assert rewrapped[0] == 3 and not keyed.needs_rewrap(rewrapped)
    assert keyed.unwrap(rewrapped, CONTEXT, uid) == dek
    bad_padding = bytearray(legacy)
    bad_padding[1 + 16 + 15] ^= 0x01  # the last plaintext byte, the padding, becomes 0x11
    bad_tag = bytearray(legacy)
    bad_tag[-1] ^= 0x01
    current = keyed.wrap(dek, CONTEXT).blob
    bad_current = bytearray(current)
    bad_current[1 + 16] ^= 0x01
    answers = []
    counted = _Counted(keyed, monkeypatch)
    for blob in (bad_padding, bad_tag, bad_current):
        counted.operations.clear()
        with pytest.raises(KeyMaterialInvalid) as bad:
            keyed.unwrap(bytes(blob), CONTEXT, uid)
        answers.append((list(counted.operations), str(bad.value)))
    assert answers == [(["Decrypt"], answers[0][1])] * 3
    assert "tampered" in answers[0][1]


def test_only_32_byte_deks_and_a_configured_key(
    keyed: KmipProvider, provider: KmipProvider
) -> None:
    for size in (0, 16, 31, 33, 64):
        with pytest.raises(KeyMaterialInvalid, match="32 bytes"):
            keyed.wrap(b"k" * size, CONTEXT)
    with pytest.raises(KeyMaterialInvalid, match="no KMIP key"):
        provider.wrap(secrets.token_bytes(32), CONTEXT)
    assert not provider.health().usable


def test_revoked_then_destroyed_key(keyed: KmipProvider) -> None:
    uid = keyed.current_version()
    blob = keyed.wrap(secrets.token_bytes(32), CONTEXT).blob

    revoke(uid)
    health = keyed.health()
    assert not health.usable and "compromised" in health.detail
    with pytest.raises(KeyAccessDenied, match="PERMISSION_DENIED"):
        keyed.unwrap(blob, CONTEXT, uid)
    with pytest.raises(KeyAccessDenied):
        keyed.wrap(secrets.token_bytes(32), CONTEXT)

    destroy(uid)
    health = keyed.health()
    assert not health.usable and "not found" in health.detail
    with pytest.raises(KeyAccessDenied, match="ITEM_NOT_FOUND"):
        keyed.unwrap(blob, CONTEXT, uid)


def test_prepare_enable_and_pin_version(provider: KmipProvider, keyed: KmipProvider) -> None:
    made = provider.prepare_enable()["key_uid"]
    assert key_state(made) == enums.State.ACTIVE
    assert keyed.prepare_enable() == {"key_uid": keyed.current_version()}
    assert keyed.pin_version(made) == {"key_uid": made}


def test_rotate_now_makes_a_new_key(keyed: KmipProvider) -> None:
    old = keyed.current_version()
    new = keyed.rotate_now()
    assert new is not None and new != old
    assert key_state(new) == enums.State.ACTIVE
    rotated = make_provider(key_uid=new)
    dek = secrets.token_bytes(32)
    assert rotated.unwrap(rotated.wrap(dek, CONTEXT).blob, CONTEXT, new) == dek


def test_another_client_certificate_cannot_use_our_key(keyed: KmipProvider) -> None:
    uid = keyed.current_version()
    blob = keyed.wrap(secrets.token_bytes(32), CONTEXT).blob
    other = make_provider(
        credentials(cert=other_client_cert(), key_path=other_client_key()), key_uid=uid
    )
    with pytest.raises(KeyAccessDenied):
        other.unwrap(blob, CONTEXT, uid)
    with pytest.raises(KeyAccessDenied):
        other.wrap(secrets.token_bytes(32), CONTEXT)
    assert not other.health().usable


def test_passphrase_protected_client_key_connects() -> None:
    key = encrypted_client_key(b"right passphrase")
    provider = make_provider(credentials(key=key, passphrase=b"right passphrase"))
    assert all_required_passed(provider.run_checks(CONTEXT))
    with pytest.raises(InvalidKmipMaterial):
        make_provider(credentials(key=key, passphrase=b"wrong"))
    with pytest.raises(InvalidKmipMaterial):
        make_provider(credentials(key=key))


def test_username_and_password_are_sent() -> None:
    provider = make_provider(
        credentials(password="kmip password"), username="keyward-user", key_uid=None
    )
    conn = provider._open()
    credential = conn.client.proxy._build_credential()
    assert credential.credential_type == enums.CredentialType.USERNAME_AND_PASSWORD
    uid = provider.create_key()
    assert key_state(uid) == enums.State.ACTIVE
    assert "kmip password" not in repr(provider) + repr(provider.describe())
    assert provider.describe().facts["Username"] == "keyward-user"


def test_server_info_and_describe(keyed: KmipProvider) -> None:
    versions, operations = keyed.server_info()
    assert {"1.0", "1.1", "1.2"} <= set(versions)
    assert {"Create", "Activate", "Encrypt", "Decrypt", "Get Attributes", "Revoke"} <= set(
        operations
    )
    facts = keyed.describe().facts
    settings = kmip_settings()
    assert facts["Server"] == f"{settings.host}:{settings.port}"
    assert facts["Key unique identifier"] == keyed.current_version()
    assert CLIENT_CN in facts["Client certificate"]
    assert "PRIVATE" not in repr(keyed) + repr(keyed.describe())


def test_connection_is_reused_and_replaced_when_closed(keyed: KmipProvider) -> None:
    uid = keyed.current_version()
    dek = secrets.token_bytes(32)
    blob = keyed.wrap(dek, CONTEXT).blob
    first = keyed._open()
    assert keyed.unwrap(blob, CONTEXT, uid) == dek
    assert keyed._open() is first  # one handshake for many requests
    first.sock.shutdown(socket.SHUT_RDWR)  # as if the server had closed it
    assert keyed.unwrap(blob, CONTEXT, uid) == dek
    assert keyed._open() is not first


def test_threads_share_one_provider(keyed: KmipProvider) -> None:
    uid = keyed.current_version()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                dek = secrets.token_bytes(32)
                assert keyed.unwrap(keyed.wrap(dek, CONTEXT).blob, CONTEXT, uid) == dek
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# -- servers without Encrypt/Decrypt: Get, and AES-GCM in memory --------------------------


class GetOnlyProvider(KmipProvider):
    """As if Query had listed no Encrypt/Decrypt (PyKMIP's server has both)."""

    def _server_side_crypto(self) -> bool:
        return False


def test_get_fallback_round_trip_and_checks() -> None:
    provider = make_provider(cls=GetOnlyProvider)
    results = provider.run_checks(CONTEXT)
    assert all_required_passed(results), results
    assert "in memory" in by_name(results)[CHECK_ROUND_TRIP].message

    uid = provider.create_key()
    keyed = make_provider(cls=GetOnlyProvider, key_uid=uid, key_cache_seconds=0)
    dek = secrets.token_bytes(32)
    blob = keyed.wrap(dek, CONTEXT).blob
    assert blob[0] == 2 and len(blob) == 1 + 12 + 32 + 16
    assert keyed.unwrap(blob, CONTEXT, uid) == dek
    with pytest.raises(KeyMaterialInvalid, match="tampered"):
        keyed.unwrap(blob[:-1] + bytes([blob[-1] ^ 1]), CONTEXT, uid)
    with pytest.raises(KeyMaterialInvalid, match="context"):
        keyed.unwrap(blob, {**CONTEXT, "dek": "8"}, uid)
    # A blob says how it was wrapped: a provider using the server unwraps it too.
    assert make_provider(key_uid=uid).unwrap(blob, CONTEXT, uid) == dek

    revoke(uid)  # Get still returns a revoked key: the state is checked first
    with pytest.raises(KeyAccessDenied, match="compromised"):
        keyed.unwrap(blob, CONTEXT, uid)


def test_get_fallback_holds_the_key_for_the_cache_time_only() -> None:
    uid = make_provider().create_key()
    cached = make_provider(cls=GetOnlyProvider, key_uid=uid, key_cache_seconds=300)
    dek = secrets.token_bytes(32)
    blob = cached.wrap(dek, CONTEXT).blob
    revoke(uid)
    assert cached.unwrap(blob, CONTEXT, uid) == dek  # within the cache time
    cached._keys[uid] = (cached._keys[uid][0], 0.0)  # the cache time has passed
    with pytest.raises(KeyAccessDenied):
        cached.unwrap(blob, CONTEXT, uid)
    assert uid not in cached._keys
