"""boto3 against the LocalStack (KMS, S3, STS) that scripts/servers.sh starts for the suite.

LocalStack takes a 12-digit access key id as the account id, so each client below acts as
the account it names; the secret is not checked.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import pytest
from botocore.config import Config

ENDPOINT_VARIABLE = "KEYWARD_TEST_AWS_ENDPOINT"
ACCOUNT_ID = "111122223333"
OTHER_ACCOUNT_ID = "444455556666"
REGION = "eu-west-1"


def aws_endpoint() -> str:
    """LocalStack's URL; fails the test when the suite was not started by `make test`."""
    endpoint = os.environ.get(ENDPOINT_VARIABLE, "")
    if not endpoint:
        pytest.fail(
            f"{ENDPOINT_VARIABLE} is not set: run the suite with `make test`, which starts "
            "LocalStack (scripts/servers.sh), or point it at a running LocalStack",
            pytrace=False,
        )
    return endpoint


def boto_client(service: str, account_id: str = ACCOUNT_ID, region: str = REGION) -> Any:
    """A boto3 client for `service` acting as `account_id` in LocalStack."""
    if len(account_id) != 12 or not account_id.isdigit():
        raise ValueError(f"an AWS account id has 12 digits, not {account_id!r}")
    # Any: boto3-stubs, when installed, only types calls with a literal service name.
    make_client: Any = boto3.client
    return make_client(
        service,
        endpoint_url=aws_endpoint(),
        region_name=region,
        aws_access_key_id=account_id,
        aws_secret_access_key="localstack",  # any value: LocalStack does not check it
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=30),
    )


def create_kms_key(
    account_id: str = ACCOUNT_ID,
    region: str = REGION,
    *,
    origin: str = "AWS_KMS",
    description: str = "keyward test key",
) -> str:
    """Create a SYMMETRIC_DEFAULT ENCRYPT_DECRYPT key in `account_id`; return its ARN.

    With origin="EXTERNAL" the key waits in PendingImport for its key material.
    """
    metadata = boto_client("kms", account_id, region).create_key(
        KeySpec="SYMMETRIC_DEFAULT",
        KeyUsage="ENCRYPT_DECRYPT",
        Origin=origin,
        Description=description,
    )["KeyMetadata"]
    return str(metadata["Arn"])
