"""What the AWS KMS registration page shows: the policies a customer must add."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from django.conf import settings

from tenants.models import Tenant

# Operations that carry an encryption context: only these can be limited to the
# tenant by a kms:EncryptionContext condition. Any other operation under such a
# condition is denied outright (DescribeKey carries no context).
# kms:ReEncrypt* lets a rotation rewrap inside KMS (ReEncrypt): without it, a
# rotation falls back to Decrypt and Encrypt.
WITH_CONTEXT = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*")
# What Save and Test and the health check read about the key itself.
WITHOUT_CONTEXT = ("kms:DescribeKey", "kms:ListKeyRotations")


def key_policy_statements(tenant: Tenant, role_arn: str) -> list[dict[str, Any]]:
    """The statements to add to the customer's key policy.

    The principal is the customer's own role when Keyward assumes one, else
    Keyward's principal directly. Wrapping and unwrapping are limited to this
    tenant's encryption context; reading the key's state cannot be (those
    operations carry no context), so it is a statement of its own.
    """
    principal = role_arn or settings.KEYWARD_AWS_VENDOR_PRINCIPAL
    sid = tenant.slug.replace("-", "")[:40]
    return [
        {
            "Sid": f"AllowKeywardEnvelopeFor{sid}",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": list(WITH_CONTEXT),
            "Resource": "*",
            "Condition": {
                # Keyward binds every wrapped data key to the tenant in the
                # encryption context; the key can be used for this tenant only.
                "StringEquals": {"kms:EncryptionContext:keyward:tenant": str(tenant.pk)}
            },
        },
        {
            "Sid": f"AllowKeywardKeyStatusFor{sid}",
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": list(WITHOUT_CONTEXT),
            "Resource": "*",
        },
    ]


def key_policy_statement(tenant: Tenant, role_arn: str) -> str:
    """`key_policy_statements` as the page shows them, ready to copy."""
    return json.dumps(key_policy_statements(tenant, role_arn), indent=2)


def role_trust_policy(external_id: str) -> str:
    """The trust policy of the customer's role: only Keyward, only with the external id."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": settings.KEYWARD_AWS_VENDOR_PRINCIPAL},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
                }
            ],
        },
        indent=2,
    )


def suggested_external_id(tenant: Tenant) -> str:
    """Keyward's external id for this tenant: stable, unguessable, never chosen by the customer.

    Derived (not random) so the page can show it before anything is saved;
    stored in the source at registration, so it survives a SECRET_KEY change.
    """
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"aws-external-id:{tenant.pk}".encode(), hashlib.sha256
    ).hexdigest()
    return f"keyward-{digest[:40]}"
