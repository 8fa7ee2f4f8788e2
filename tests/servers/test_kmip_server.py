"""The PyKMIP server that `make test` starts answers PyKMIP's client over mutual TLS."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.support.kmip import (
    KmipOperationFailure,
    SymmetricKey,
    ca_cert,
    client_cert,
    enums,
    expired_client_cert,
    expired_client_key,
    kmip_client,
    no_client_auth_cert,
    no_client_auth_key,
    other_ca_cert,
    other_client_cert,
    other_client_key,
)

# PyKMIP's client makes its TLS context with the deprecated ssl.PROTOCOL_TLS.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")

CBC = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.CBC,
    "padding_method": enums.PaddingMethod.PKCS5,
}
GCM = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.GCM,
    "tag_length": 16,
}


@pytest.fixture
def client() -> Iterator[Any]:
    with kmip_client() as opened:
        yield opened


def state(client: Any, uid: str) -> enums.State:
    _, attributes = client.get_attributes(uid, ["State"])
    return attributes[0].attribute_value.value


def test_aes_key_lifecycle_and_server_side_encryption(client: Any) -> None:
    uid = client.create(enums.CryptographicAlgorithm.AES, 256)
    assert state(client, uid) == enums.State.PRE_ACTIVE
    client.activate(uid)
    assert state(client, uid) == enums.State.ACTIVE

    plaintext = os.urandom(32)
    iv = os.urandom(16)
    ciphertext, generated_iv = client.encrypt(
        plaintext, uid=uid, cryptographic_parameters=CBC, iv_counter_nonce=iv
    )
    assert generated_iv is None
    assert len(ciphertext) == 48  # 32 bytes and a full block of PKCS5 padding
    assert (
        client.decrypt(ciphertext, uid=uid, cryptographic_parameters=CBC, iv_counter_nonce=iv)
        == plaintext
    )

    # GCM: PyKMIP's client drops the tag the server returns and cannot send one, so the
    # server refuses to decrypt; check the ciphertext locally (GCM's keystream is AES-CTR
    # from the counter block nonce || 2).
    nonce = os.urandom(12)
    sealed, _ = client.encrypt(
        plaintext, uid=uid, cryptographic_parameters=GCM, iv_counter_nonce=nonce
    )
    assert len(sealed) == 32
    with pytest.raises(KmipOperationFailure, match="tag must be provided"):
        client.decrypt(sealed, uid=uid, cryptographic_parameters=GCM, iv_counter_nonce=nonce)

    key = client.get(uid)
    assert isinstance(key, SymmetricKey)
    assert key.cryptographic_algorithm == enums.CryptographicAlgorithm.AES
    assert key.cryptographic_length == 256
    assert len(key.value) == 32
    keystream = Cipher(algorithms.AES(key.value), modes.CTR(nonce + b"\0\0\0\2")).encryptor()
    assert keystream.update(sealed) + keystream.finalize() == plaintext

    with pytest.raises(KmipOperationFailure) as destroy_active:
        client.destroy(uid)
    assert destroy_active.value.reason == enums.ResultReason.PERMISSION_DENIED

    client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
    assert state(client, uid) == enums.State.DEACTIVATED
    with pytest.raises(KmipOperationFailure) as refused:
        client.encrypt(plaintext, uid=uid, cryptographic_parameters=CBC, iv_counter_nonce=iv)
    assert refused.value.reason == enums.ResultReason.PERMISSION_DENIED
    assert client.get(uid).value == key.value  # still readable once revoked

    client.destroy(uid)
    with pytest.raises(KmipOperationFailure) as gone:
        client.get(uid)
    assert gone.value.reason == enums.ResultReason.ITEM_NOT_FOUND


def test_another_client_cn_does_not_own_the_key(client: Any) -> None:
    uid = client.create(enums.CryptographicAlgorithm.AES, 256)
    with (
        kmip_client(cert=other_client_cert(), key=other_client_key()) as other,
        pytest.raises(KmipOperationFailure) as denied,
    ):
        other.get(uid)
    assert denied.value.reason in {
        enums.ResultReason.PERMISSION_DENIED,
        enums.ResultReason.ITEM_NOT_FOUND,
    }
    client.destroy(uid)


def test_discover_versions_and_query(client: Any) -> None:
    # ProxyKmipClient has neither operation: its lower-level KMIPProxy does.
    versions = client.proxy.discover_versions()
    assert versions.result_status.value == enums.ResultStatus.SUCCESS
    offered = {(version.major, version.minor) for version in versions.protocol_versions}
    assert {(1, 0), (1, 2), (1, 4), (2, 0)} <= offered

    answer = client.proxy.query(
        query_functions=[
            enums.QueryFunction.QUERY_OPERATIONS,
            enums.QueryFunction.QUERY_SERVER_INFORMATION,
        ]
    )
    assert answer.result_status.value == enums.ResultStatus.SUCCESS
    operations = set(answer.operations)
    assert {
        enums.Operation.CREATE,
        enums.Operation.ACTIVATE,
        enums.Operation.ENCRYPT,
        enums.Operation.DECRYPT,
        enums.Operation.REVOKE,
        enums.Operation.DESTROY,
    } <= operations
    assert "PyKMIP" in answer.vendor_identification


def test_kmip_2_0_client(client: Any) -> None:
    with kmip_client(kmip_version=enums.KMIPVersion.KMIP_2_0) as client_2_0:
        uid = client_2_0.create(enums.CryptographicAlgorithm.AES, 128)
        assert client_2_0.get(uid).cryptographic_length == 128
        client_2_0.destroy(uid)


def test_wrong_ca_fails_to_verify_the_server() -> None:
    with pytest.raises(ssl.SSLCertVerificationError), kmip_client(ca=other_ca_cert()):
        pass


@pytest.mark.parametrize(
    ("cert", "key", "alert"),
    [
        (expired_client_cert, expired_client_key, "CERTIFICATE_EXPIRED"),
        (no_client_auth_cert, no_client_auth_key, "UNSUPPORTED_CERTIFICATE"),
    ],
    ids=["expired", "without-clientAuth"],
)
def test_server_refuses_bad_client_certificates(cert: Any, key: Any, alert: str) -> None:
    with pytest.raises(ssl.SSLError, match=alert), kmip_client(cert=cert(), key=key()):
        pass


def test_server_requires_a_client_certificate() -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)), kmip_client(cert=None, key=None):
        pass


def test_certificates_chain_to_the_ca() -> None:
    context = ssl.create_default_context(cafile=ca_cert())
    assert context.cert_store_stats()["x509_ca"] == 1
    assert client_cert().endswith("client.crt")
