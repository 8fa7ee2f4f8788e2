"""What the AWS KMS registration page shows: the policies a customer must add."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from django.conf import settings

from tenants.models import Tenant


def key_policy_statement(tenant: Tenant, role_arn: str) -> str:
    """The statement to add to the customer's key policy, filled in and ready to copy.

    The principal is the customer's own role when Keyward assumes one, else
    Keyward's principal directly.
    """
    principal = role_arn or settings.KEYWARD_AWS_VENDOR_PRINCIPAL
    statement: dict[str, Any] = {
        "Sid": f"AllowKeywardEnvelopeFor{tenant.slug.replace('-', '')[:40]}",
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
        "Resource": "*",
        "Condition": {
            # Keyward binds every wrapped data key to the tenant in the
            # encryption context; the key can be used for this tenant only.
            "StringEquals": {"kms:EncryptionContext:keyward:tenant": str(tenant.pk)}
        },
    }
    return json.dumps(statement, indent=2)


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
