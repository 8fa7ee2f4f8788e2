from __future__ import annotations

from typing import Any

import pytest

# The loopback AWS stand-in, for answers LocalStack cannot give.
from tests.keys.test_aws_kms_provider import fake_aws  # noqa: F401


def byok_with(acme: Any, role_arn: str) -> Any:
    """`acme` on a new customer AWS KMS key through an alias, with five records."""
    from records.services import records_create
    from records.synthetic import synthetic_records
    from tenants.models import ServiceState
    from tests.keys.test_health import enable_aws
    from tests.support.aws import boto_client, create_kms_key

    kms = boto_client("kms", CUSTOMER_ACCOUNT)
    key_arn = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    alias = f"alias/keyward-{acme.tenant.pk.hex[:12]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_arn.rsplit("/", 1)[1])
    alias_arn = f"arn:aws:kms:eu-west-1:{CUSTOMER_ACCOUNT}:{alias}"
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(5)))
    enable_aws(acme.tenant, alias_arn, role_arn)
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    return {"acme": acme, "kms": kms, "key_arn": key_arn, "alias": alias, "records": records}


@pytest.fixture
def byok(acme, aws_env) -> Any:
    """A tenant protected by a customer's AWS KMS key, through an alias (LocalStack),
    used by the vendor's own AWS principal."""
    return byok_with(acme, "")


@pytest.fixture
def byok_role(acme, aws_env) -> Any:
    """The same, used through a role in the customer's account (Keyward assumes it)."""
    return byok_with(acme, f"arn:aws:iam::{CUSTOMER_ACCOUNT}:role/keyward-access")


@pytest.fixture
def aws_env(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalStack as AWS, with Keyward acting as the vendor account."""
    from keys.runtime import reset_for_tests
    from tests.support.aws import aws_endpoint

    settings.KEYWARD_AWS_ENDPOINT_URL = aws_endpoint()
    settings.KEYWARD_AWS_TIMEOUT_SECONDS = 3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", VENDOR_ACCOUNT)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "vendor-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    reset_for_tests()


CUSTOMER_ACCOUNT = "111122223333"
VENDOR_ACCOUNT = "999988887777"
