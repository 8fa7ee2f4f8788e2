"""A customer's AWS KMS key as the KEK (BYOKMS), through boto3.

Framework-free: the configuration arrives as plain values (`AwsKmsConfig`), and
nothing here imports Django.

- The customer gives a key ARN or an alias ARN (validated strictly by
  `parse_kms_arn` before anything is saved), and optionally a role in their
  account that the vendor assumes through STS with an external id.
- `wrap` encrypts the DEK under the configured ARN with the context as the KMS
  encryption context; the version recorded is the key ARN that actually
  encrypted (an alias resolves to it). `unwrap` decrypts with KeyId pinned to
  that key ARN, so a ciphertext can never be decrypted by another key.
- AWS errors map onto base.py's contract: the customer cutting access
  (disabled, pending deletion or import, not found, access denied, including
  an STS AssumeRole refusal) is `KeyAccessDenied`; a wrong ciphertext or
  context is `KeyMaterialInvalid`; timeouts, refused connections, throttling,
  5xx and KMS's own KeyUnavailableException (its key store is unavailable)
  are `KeyUnavailable`. An error not listed is `KeyUnavailable` too: it keeps
  the tenant degraded (caches serve) instead of revoking it on a guess.
- Retries with backoff and jitter are botocore's ("standard" mode, a bounded
  total number of attempts); every request has short connect and read
  timeouts.

Modules: `config` (ARNs, external id, the vendor's credentials), `errors` (AWS
and botocore errors onto base.py's), `transport` (sessions, clients, retries,
AssumeRole), and `provider` (`AwsKmsProvider`).
"""

from __future__ import annotations

from keys.providers.aws_kms.config import (
    DEFAULT_PARTITIONS,
    AwsKmsConfig,
    InvalidArn,
    InvalidAwsKmsConfig,
    InvalidExternalId,
    ParsedArn,
    ParsedRoleArn,
    VendorCredentials,
    parse_kms_arn,
    parse_role_arn,
    validate_external_id,
)
from keys.providers.aws_kms.errors import (
    AwsKeyAccessDenied,
    AwsKeyMaterialInvalid,
    AwsKeyUnavailable,
)
from keys.providers.aws_kms.provider import (
    CHECK_ENABLED,
    CHECK_FOUND,
    CHECK_ROLE,
    CHECK_ROUND_TRIP,
    CHECK_SYMMETRIC,
    AwsKmsProvider,
    KeyStatus,
)
from keys.providers.aws_kms.transport import AssumedCredentials

__all__ = [
    "CHECK_ENABLED",
    "CHECK_FOUND",
    "CHECK_ROLE",
    "CHECK_ROUND_TRIP",
    "CHECK_SYMMETRIC",
    "DEFAULT_PARTITIONS",
    "AssumedCredentials",
    "AwsKeyAccessDenied",
    "AwsKeyMaterialInvalid",
    "AwsKeyUnavailable",
    "AwsKmsConfig",
    "AwsKmsProvider",
    "InvalidArn",
    "InvalidAwsKmsConfig",
    "InvalidExternalId",
    "KeyStatus",
    "ParsedArn",
    "ParsedRoleArn",
    "VendorCredentials",
    "parse_kms_arn",
    "parse_role_arn",
    "validate_external_id",
]
