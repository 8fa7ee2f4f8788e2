"""The AWS KMS that LocalStack serves to the suite behaves as BYOK tests need (no mocks)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.aws import ACCOUNT_ID, OTHER_ACCOUNT_ID, boto_client, create_kms_key

CONTEXT = {"tenant": "acme", "purpose": "smoke"}


@pytest.fixture
def kms() -> Any:
    return boto_client("kms", ACCOUNT_ID)


def test_encrypt_decrypt_round_trip_enforces_encryption_context(kms: Any) -> None:
    arn = create_kms_key(ACCOUNT_ID)
    assert arn.startswith(f"arn:aws:kms:eu-west-1:{ACCOUNT_ID}:key/")

    blob = kms.encrypt(KeyId=arn, Plaintext=b"secret", EncryptionContext=CONTEXT)["CiphertextBlob"]
    decrypted = kms.decrypt(CiphertextBlob=blob, KeyId=arn, EncryptionContext=CONTEXT)
    assert decrypted["Plaintext"] == b"secret"
    assert decrypted["KeyId"] == arn

    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=blob, KeyId=arn, EncryptionContext={**CONTEXT, "tenant": "x"})


def test_disabled_key_refuses_to_encrypt_and_decrypt(kms: Any) -> None:
    arn = create_kms_key(ACCOUNT_ID)
    blob = kms.encrypt(KeyId=arn, Plaintext=b"secret")["CiphertextBlob"]

    kms.disable_key(KeyId=arn)

    with pytest.raises(kms.exceptions.DisabledException):
        kms.encrypt(KeyId=arn, Plaintext=b"secret")
    with pytest.raises(kms.exceptions.DisabledException):
        kms.decrypt(CiphertextBlob=blob, KeyId=arn)


def test_imported_key_material_encrypts_and_decrypts(kms: Any) -> None:
    arn = create_kms_key(ACCOUNT_ID, origin="EXTERNAL")
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "PendingImport"

    params = kms.get_parameters_for_import(
        KeyId=arn, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_4096"
    )
    wrapping_key = serialization.load_der_public_key(params["PublicKey"])
    assert isinstance(wrapping_key, rsa.RSAPublicKey)
    assert wrapping_key.key_size == 4096
    wrapped = wrapping_key.encrypt(
        os.urandom(32),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    kms.import_key_material(
        KeyId=arn,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrapped,
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "Enabled"

    blob = kms.encrypt(KeyId=arn, Plaintext=b"byok", EncryptionContext=CONTEXT)["CiphertextBlob"]
    decrypted = kms.decrypt(CiphertextBlob=blob, KeyId=arn, EncryptionContext=CONTEXT)
    assert decrypted["Plaintext"] == b"byok"


def test_another_account_uses_the_key_by_full_arn() -> None:
    arn = create_kms_key(ACCOUNT_ID)
    other = boto_client("kms", OTHER_ACCOUNT_ID)
    identity = boto_client("sts", OTHER_ACCOUNT_ID).get_caller_identity()
    assert identity["Account"] == OTHER_ACCOUNT_ID

    blob = other.encrypt(KeyId=arn, Plaintext=b"shared", EncryptionContext=CONTEXT)[
        "CiphertextBlob"
    ]
    decrypted = other.decrypt(CiphertextBlob=blob, KeyId=arn, EncryptionContext=CONTEXT)
    assert decrypted["Plaintext"] == b"shared"
    assert decrypted["KeyId"] == arn
    # The owning account decrypts it too: the same key, not a copy in the other account.
    owner = boto_client("kms", ACCOUNT_ID)
    assert owner.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"] == b"shared"
