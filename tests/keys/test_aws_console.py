"""The key policy Keyward suggests to AWS KMS customers (keys/aws_console.py).

LocalStack stores key policies but does not evaluate them (that takes IAM
enforcement, not in its community edition): the policy is put on a real key
there, so its syntax is checked by KMS's API, and its meaning is checked here
against what AWS documents: only Encrypt, Decrypt (and the other cryptographic
operations) carry an encryption context, so an operation like DescribeKey
under a `kms:EncryptionContext:` condition is always denied.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from keys.aws_console import WITH_CONTEXT, WITHOUT_CONTEXT, key_policy_statements
from tests.support.aws import aws_endpoint, boto_client, create_kms_key

CUSTOMER_ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{CUSTOMER_ACCOUNT}:role/keyward-access"
PROVIDER = Path(__file__).resolve().parents[2] / "keys/providers/aws_kms/provider.py"


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


@pytest.mark.django_db
def test_only_operations_with_a_context_are_bound_to_the_tenant(acme: Any) -> None:
    statements = key_policy_statements(acme.tenant, ROLE)
    conditioned = [s for s in statements if "Condition" in s]
    plain = [s for s in statements if "Condition" not in s]
    for statement in conditioned:
        condition = statement["Condition"]["StringEquals"]
        assert condition == {"kms:EncryptionContext:keyward:tenant": str(acme.tenant.pk)}
        assert _actions(statement) <= set(WITH_CONTEXT)
    assert "kms:DescribeKey" in set().union(*(_actions(s) for s in plain))
    assert all(s["Principal"] == {"AWS": ROLE} and s["Effect"] == "Allow" for s in statements)


# ReEncrypt is two IAM actions: decrypting under the source key, encrypting
# under the destination key.
_IAM_ACTIONS = {"re_encrypt": {"kms:ReEncryptFrom", "kms:ReEncryptTo"}}


@pytest.mark.django_db
def test_every_operation_keyward_calls_is_allowed(acme: Any) -> None:
    allowed = set().union(*(_actions(s) for s in key_policy_statements(acme.tenant, ROLE)))
    # boto3 calls on the customer's key, named as IAM names them.
    called = set().union(
        *(
            _IAM_ACTIONS.get(name, {"kms:" + "".join(part.title() for part in name.split("_"))})
            for name in re.findall(
                r"\.(encrypt|decrypt|re_encrypt|describe_key|list_key_rotations)\(",
                PROVIDER.read_text(),
            )
        )
    )
    assert called == {
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:DescribeKey",
        "kms:ListKeyRotations",
    }
    patterns = set(WITH_CONTEXT) | set(WITHOUT_CONTEXT)
    assert all(any(fnmatch.fnmatchcase(a, p) for p in allowed) for a in called), called - allowed
    assert all(any(fnmatch.fnmatchcase(a, p) for a in called) for p in patterns)


@pytest.mark.django_db
def test_the_policy_is_accepted_by_kms(acme: Any, settings: Any) -> None:
    settings.KEYWARD_AWS_ENDPOINT_URL = aws_endpoint()
    key_arn = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    with override_settings(KEYWARD_AWS_VENDOR_PRINCIPAL="arn:aws:iam::999988887777:root"):
        statements = key_policy_statements(acme.tenant, "")
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "KeyAdministration",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{CUSTOMER_ACCOUNT}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            *statements,
        ],
    }
    kms = boto_client("kms", CUSTOMER_ACCOUNT, "eu-west-1")
    kms.put_key_policy(KeyId=key_arn, PolicyName="default", Policy=json.dumps(document))
    stored = json.loads(kms.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
    assert stored["Statement"][1:] == statements
