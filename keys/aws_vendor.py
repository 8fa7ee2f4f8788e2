"""Keyward's own AWS KMS, for uploaded keys kept in EXTERNAL-origin KMS keys (the Netcore flow).

The customer's wrapped key goes straight into KMS with ImportKeyMaterial:
Keyward never holds the private wrapping key or the plaintext key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings


class VendorKmsError(Exception):
    """A call to the vendor's KMS failed; the message says what to do."""


def vendor_kms() -> Any:
    timeout = settings.KEYWARD_AWS_TIMEOUT_SECONDS
    return boto3.client(
        "kms",
        endpoint_url=settings.KEYWARD_AWS_ENDPOINT_URL,
        region_name=settings.KEYWARD_UPLOAD_AWS_REGION,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": 3},
        ),
    )


def _call(what: str, fn: Any, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise VendorKmsError(f"{what} failed in the vendor's AWS KMS ({code})") from None
    except BotoCoreError as exc:
        raise VendorKmsError(f"{what}: the vendor's AWS KMS could not be reached ({exc})") from None


def create_external_key(*, tenant_id: str, tenant_slug: str) -> tuple[str, bytes, bytes]:
    """A new EXTERNAL-origin key and its import parameters: (key ARN, public key DER, AWS token)."""
    kms = vendor_kms()
    key = _call(
        "CreateKey",
        kms.create_key,
        Origin="EXTERNAL",
        KeySpec="SYMMETRIC_DEFAULT",
        KeyUsage="ENCRYPT_DECRYPT",
        Description=f"Keyward: uploaded key of tenant {tenant_slug}",
        Tags=[{"TagKey": "keyward:tenant", "TagValue": tenant_id}],
    )
    arn = key["KeyMetadata"]["Arn"]
    params = _call(
        "GetParametersForImport",
        kms.get_parameters_for_import,
        KeyId=arn,
        WrappingAlgorithm="RSAES_OAEP_SHA_256",
        WrappingKeySpec="RSA_4096",
    )
    return arn, bytes(params["PublicKey"]), bytes(params["ImportToken"])


def import_key_material(
    *, key_arn: str, aws_token: bytes, wrapped_key: bytes, valid_to: datetime | None
) -> None:
    kwargs: dict[str, Any] = {
        "KeyId": key_arn,
        "ImportToken": aws_token,
        "EncryptedKeyMaterial": wrapped_key,
        "ExpirationModel": "KEY_MATERIAL_EXPIRES" if valid_to else "KEY_MATERIAL_DOES_NOT_EXPIRE",
    }
    if valid_to:
        kwargs["ValidTo"] = valid_to
    kms = vendor_kms()
    try:
        kms.import_key_material(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ExpiredImportTokenException",):
            raise VendorKmsError("These import parameters expired: download new ones.") from None
        raise VendorKmsError(
            "could not import the key: it was not wrapped with this import's public key "
            f"(RSAES-OAEP SHA-256), or it is not a 256-bit key ({code or 'error'})"
        ) from None
    except BotoCoreError as exc:
        raise VendorKmsError(f"the vendor's AWS KMS could not be reached ({exc})") from None


def delete_imported_material(key_arn: str) -> None:
    """Destroy Keyward's copy: the KMS key returns to PendingImport and decrypts nothing."""
    _call("DeleteImportedKeyMaterial", vendor_kms().delete_imported_key_material, KeyId=key_arn)
