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
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import boto3
import boto3.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.exceptions import (
    HTTPClientError as BotoHTTPClientError,
)

from keys.providers.base import (
    CheckResult,
    Context,
    KeyAccessDenied,
    KeyDescription,
    KeyHealth,
    KeyMaterialInvalid,
    KeyProvider,
    KeyProviderError,
    KeyUnavailable,
    Wrapped,
)

DEFAULT_PARTITIONS: tuple[str, ...] = ("aws", "aws-cn", "aws-us-gov")

CHECK_ROLE = "Role assumed"
CHECK_FOUND = "Key found"
CHECK_ENABLED = "Key enabled"
CHECK_SYMMETRIC = "Symmetric encryption key"
CHECK_ROUND_TRIP = "Round trip"

_MAX_PLAINTEXT = 4096  # KMS Encrypt accepts at most 4096 bytes of plaintext
_MAX_CIPHERTEXT = 6144  # and Decrypt at most 6144 bytes of ciphertext

# -- configuration ---------------------------------------------------------------


class InvalidAwsKmsConfig(ValueError):
    """An AWS KMS setting is malformed; the message names what is wrong."""


class InvalidArn(InvalidAwsKmsConfig):
    """A key, alias or role ARN is malformed or not allowed."""


class InvalidExternalId(InvalidAwsKmsConfig):
    """The STS external id is malformed."""


_PARTITION_RE = re.compile(r"aws(?:-[a-z]+)*", re.ASCII)
# eu-west-1, us-gov-west-1, cn-north-1, ap-southeast-2, il-central-1, us-isob-east-1
_REGION_RE = re.compile(r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}", re.ASCII)
_ACCOUNT_RE = re.compile(r"[0-9]{12}", re.ASCII)
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_MRK_RE = re.compile(r"mrk-[0-9a-f]{32}", re.ASCII)
_ALIAS_RE = re.compile(r"[a-zA-Z0-9/_-]{1,250}", re.ASCII)
_ROLE_PART = r"[A-Za-z0-9_+=,.@-]"
_ROLE_RE = re.compile(
    rf"role/(?P<path>(?:{_ROLE_PART}+/)*)(?P<name>{_ROLE_PART}{{1,64}})", re.ASCII
)
_EXTERNAL_ID_RE = re.compile(r"[A-Za-z0-9_+=,.@:/-]{2,1224}", re.ASCII)


def _show(value: str, limit: int = 80) -> str:
    """A value for an error message: quoted, and cut when long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _region_partition(region: str) -> str:
    """The partition a region belongs to: cn-* aws-cn, us-gov-* aws-us-gov, *-iso?-* aws-iso-?."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    iso = re.match(r"[a-z]{2}-iso([a-z]?)-", region)
    if iso:
        return "aws-iso" + (f"-{iso.group(1)}" if iso.group(1) else "")
    return "aws"


@dataclass(frozen=True)
class ParsedArn:
    """A validated KMS key or alias ARN."""

    arn: str
    partition: str
    region: str
    account: str
    resource_type: str  # "key" or "alias"
    resource_id: str  # the key id, or the alias name without "alias/"

    @property
    def is_alias(self) -> bool:
        return self.resource_type == "alias"

    @property
    def alias_name(self) -> str | None:
        """ "alias/<name>" for an alias ARN, else None."""
        return f"alias/{self.resource_id}" if self.is_alias else None

    @property
    def is_multi_region(self) -> bool:
        return self.resource_type == "key" and self.resource_id.startswith("mrk-")


@dataclass(frozen=True)
class ParsedRoleArn:
    """A validated IAM role ARN."""

    arn: str
    partition: str
    account: str
    path: str  # "/" or "/some/path/"
    name: str


def _check_common(
    value: object, service: str, allowed_partitions: Iterable[str]
) -> tuple[str, list[str]]:
    if not isinstance(value, str):
        raise InvalidArn(f"an ARN must be text, not {type(value).__name__}")
    if not value:
        raise InvalidArn("the ARN is empty")
    if any(ch.isspace() for ch in value):
        raise InvalidArn(f"the ARN must not contain spaces or line breaks: {_show(value)}")
    parts = value.split(":", 5)
    if parts[0] != "arn" or len(parts) != 6:
        raise InvalidArn(
            f"not an ARN: {_show(value)}; expected arn:<partition>:{service}:...  "
            "(copy it from the AWS console)"
        )
    partition = parts[1]
    if not _PARTITION_RE.fullmatch(partition):
        raise InvalidArn(f"partition {_show(partition)} is not an AWS partition")
    allowed = tuple(allowed_partitions)
    if partition not in allowed:
        raise InvalidArn(
            f"partition {partition!r} is not allowed (allowed: {', '.join(allowed) or 'none'})"
        )
    if parts[2] != service:
        raise InvalidArn(f"service must be {service!r}, not {_show(parts[2])}")
    return partition, parts


def parse_kms_arn(
    value: object, *, allowed_partitions: Iterable[str] = DEFAULT_PARTITIONS
) -> ParsedArn:
    """Validate `arn:<partition>:kms:<region>:<account>:key/<id>` or `...:alias/<name>`.

    Raises InvalidArn with a message naming what is wrong.
    """
    partition, parts = _check_common(value, "kms", allowed_partitions)
    arn = str(value)
    region, account, resource = parts[3], parts[4], parts[5]
    if not region:
        raise InvalidArn("the region is missing (a KMS ARN names its region, like eu-west-1)")
    if not _REGION_RE.fullmatch(region):
        raise InvalidArn(
            f"region {_show(region)} is not an AWS region name (like eu-west-1, "
            "us-gov-west-1 or cn-north-1)"
        )
    if _region_partition(region) != partition:
        raise InvalidArn(
            f"region {region!r} is not in partition {partition!r} "
            f"(it belongs to {_region_partition(region)!r})"
        )
    if not _ACCOUNT_RE.fullmatch(account):
        raise InvalidArn(f"account id must be 12 digits, not {_show(account)}")
    kind, slash, rest = resource.partition("/")
    if kind == "key" and slash:
        if not (_UUID_RE.fullmatch(rest) or _MRK_RE.fullmatch(rest)):
            raise InvalidArn(
                f"key id {_show(rest)} must be a key id (a lowercase UUID like "
                "1234abcd-12ab-34cd-56ef-1234567890ab) or a multi-Region key id "
                "(mrk- followed by 32 hex digits)"
            )
    elif kind == "alias" and slash:
        if not _ALIAS_RE.fullmatch(rest):
            raise InvalidArn(
                f"alias name {_show(rest)} must be 1 to 250 characters of letters, digits, "
                "'/', '_' and '-'"
            )
        if rest.startswith("aws/"):
            raise InvalidArn(
                f"alias/{rest} is an AWS managed key, not a customer managed key: "
                "create a customer managed key and use its ARN or one of its aliases"
            )
    else:
        raise InvalidArn(f"resource {_show(resource)} must be key/<key id> or alias/<alias name>")
    return ParsedArn(arn, partition, region, account, kind, rest)


def parse_role_arn(
    value: object, *, allowed_partitions: Iterable[str] = DEFAULT_PARTITIONS
) -> ParsedRoleArn:
    """Validate `arn:<partition>:iam::<12 digits>:role/<path/><name>`."""
    partition, parts = _check_common(value, "iam", allowed_partitions)
    arn = str(value)
    region, account, resource = parts[3], parts[4], parts[5]
    if region:
        raise InvalidArn(f"an IAM role ARN has no region, but this one names {_show(region)}")
    if not _ACCOUNT_RE.fullmatch(account):
        raise InvalidArn(f"account id must be 12 digits, not {_show(account)}")
    match = _ROLE_RE.fullmatch(resource)
    if not match:
        raise InvalidArn(
            f"resource {_show(resource)} must be role/<name> or role/<path>/<name>, the name "
            "1 to 64 characters of letters, digits and +=,.@_-"
        )
    return ParsedRoleArn(arn, partition, account, "/" + match.group("path"), match.group("name"))


def validate_external_id(value: object) -> str:
    """2 to 1224 characters of letters, digits and +=,.@:/_-, as STS requires."""
    if not isinstance(value, str):
        raise InvalidExternalId(f"the external id must be text, not {type(value).__name__}")
    if not 2 <= len(value) <= 1224:
        raise InvalidExternalId(
            f"the external id must be 2 to 1224 characters long, not {len(value)}"
        )
    if not _EXTERNAL_ID_RE.fullmatch(value):
        bad = sorted({ch for ch in value if not re.fullmatch(r"[A-Za-z0-9_+=,.@:/-]", ch)})
        raise InvalidExternalId(
            "the external id may only contain letters, digits and +=,.@:/_- "
            f"(found {', '.join(repr(ch) for ch in bad[:5])})"
        )
    return value


@dataclass(frozen=True)
class AwsKmsConfig:
    """What the customer configures: validated on construction, region from the ARN."""

    key_arn: str
    role_arn: str | None = None
    external_id: str | None = field(default=None, repr=False)
    allowed_partitions: tuple[str, ...] = field(default=DEFAULT_PARTITIONS, repr=False)
    region: str = field(init=False)

    def __post_init__(self) -> None:
        parsed = parse_kms_arn(self.key_arn, allowed_partitions=self.allowed_partitions)
        object.__setattr__(self, "region", parsed.region)
        if self.role_arn is not None:
            role = parse_role_arn(self.role_arn, allowed_partitions=self.allowed_partitions)
            if role.partition != parsed.partition:
                raise InvalidArn(
                    f"the role is in partition {role.partition!r} but the key is in "
                    f"{parsed.partition!r}: a role can only be assumed in its own partition"
                )
        if self.external_id is not None:
            if self.role_arn is None:
                raise InvalidExternalId("an external id is only used with a role ARN")
            validate_external_id(self.external_id)

    @property
    def parsed(self) -> ParsedArn:
        return parse_kms_arn(self.key_arn, allowed_partitions=self.allowed_partitions)

    @property
    def account(self) -> str:
        return self.parsed.account


@dataclass(frozen=True)
class VendorCredentials:
    """The vendor's own AWS credentials (the principal the customer's key policy trusts)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AssumedCredentials:
    """Temporary credentials from STS AssumeRole."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    role_session_name: str


@dataclass(frozen=True)
class KeyStatus:
    """The key's state for the health check.

    `arn` is the configured ARN; `alias_target` the key ARN an alias ARN resolves
    to (None when a key ARN is configured); `key_arn` is the key in use either way.
    """

    arn: str
    state: str
    enabled: bool
    pending_deletion: bool
    alias_target: str | None
    deletion_date: datetime | None = None

    @property
    def key_arn(self) -> str:
        return self.alias_target or self.arn


def _rotate_on_demand(kms: Any, *, key_arn: str) -> Any:
    return kms.rotate_key_on_demand(KeyId=key_arn)


def _list_key_rotations(kms: Any, *, kwargs: dict[str, Any]) -> Any:
    return kms.list_key_rotations(**kwargs)


# -- error mapping ---------------------------------------------------------------

_ACCESS_DENIED = {"AccessDeniedException", "AccessDenied"}
_REVOKED = {"DisabledException", "KMSInvalidStateException", "NotFoundException"}
_INVALID = {
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "InvalidKeyUsageException",
    "InvalidArnException",
}
_TRANSIENT = {
    "KeyUnavailableException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
}
# AWS refusing the vendor's own credentials: an operator problem, not the customer's.
_VENDOR_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
}
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}

_HINTS = {
    "DisabledException": "the key is disabled; enable it in the AWS KMS console",
    "NotFoundException": "the key or alias does not exist (deleted, or a wrong ARN)",
    "KeyUnavailableException": "the key's key store is unavailable; try again later",
    "ThrottlingException": "AWS KMS is throttling requests; they are retried later",
    "LimitExceededException": "a KMS request quota was exceeded; requests are retried later",
    "KMSInternalException": "an internal AWS KMS error; requests are retried later",
    "DependencyTimeoutException": "AWS KMS timed out internally; requests are retried later",
    "IncorrectKeyException": "the wrapped key was encrypted under another KMS key",
    "InvalidCiphertextException": (
        "the encryption context differs from the one used when wrapping, "
        "or the wrapped key was altered"
    ),
    "InvalidKeyUsageException": "the key cannot be used to encrypt and decrypt",
}


def _aws_message(error: ClientError) -> tuple[str, str, int]:
    info = error.response.get("Error", {})
    code = str(info.get("Code", "") or "UnknownError")
    message = " ".join(str(info.get("Message", "") or "").split())
    if len(message) > 300:
        message = message[:300] + "..."
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, message, status


class _AwsCode(KeyProviderError):
    """The AWS error code behind a provider error ("" when there was no AWS answer)."""

    aws_code: str = ""

    def __init__(self, message: str, aws_code: str = "") -> None:
        super().__init__(message)
        self.aws_code = aws_code


class AwsKeyUnavailable(_AwsCode, KeyUnavailable):
    pass


class AwsKeyAccessDenied(_AwsCode, KeyAccessDenied):
    pass


class AwsKeyMaterialInvalid(_AwsCode, KeyMaterialInvalid):
    pass


def _aws_code(error: BaseException) -> str:
    return error.aws_code if isinstance(error, _AwsCode) else ""


# -- the provider ----------------------------------------------------------------


class AwsKmsProvider(KeyProvider):
    """A KEK in the customer's AWS KMS, used cross-account by full ARN.

    endpoint_url: one URL for KMS and STS (LocalStack); None for AWS's regional ones.
    session_factory: builds the boto3 session with the vendor's own identity; by
        default a session from `vendor_credentials`, else boto3's default chain.
    max_attempts: total attempts per request, the first included (botocore's
        `total_max_attempts`; its `max_attempts` would count retries only).
    role_session_seconds, credential_refresh_margin: AssumeRole session length,
        and how long before expiry the cached credentials are renewed.
    """

    kind = "aws_kms"

    def __init__(
        self,
        config: AwsKmsConfig,
        *,
        endpoint_url: str | None = None,
        session_factory: Callable[[], boto3.session.Session] | None = None,
        vendor_credentials: VendorCredentials | None = None,
        connect_timeout: float = 3,
        read_timeout: float = 5,
        max_attempts: int = 3,
        role_session_seconds: int = 3600,
        credential_refresh_margin: float = 300,
    ) -> None:
        if session_factory is not None and vendor_credentials is not None:
            raise ValueError("give session_factory or vendor_credentials, not both")
        if max_attempts < 1:
            raise ValueError("max_attempts counts the first attempt: it is at least 1")
        self.config = config
        self._parsed = config.parsed
        self.endpoint_url = endpoint_url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.role_session_seconds = role_session_seconds
        self.credential_refresh_margin = credential_refresh_margin
        self.role_session_name = f"keyward-{secrets.token_hex(6)}"
        self._session_factory = session_factory
        self._vendor_credentials = vendor_credentials
        self._lock = threading.RLock()
        self._session: boto3.session.Session | None = None
        self._clients: dict[tuple[str, str], tuple[AssumedCredentials | None, Any]] = {}
        self._assumed: AssumedCredentials | None = None
        self._assumed_refresh_at = 0.0
        self._resolved_key_arn: str | None = None if self._parsed.is_alias else config.key_arn
        self.credential_refreshes = 0

    def __repr__(self) -> str:
        role = f" role={self.config.role_arn}" if self.config.role_arn else ""
        return f"<AwsKmsProvider key={self.config.key_arn}{role}>"

    # -- clients and credentials ---------------------------------------------------
    def _botocore_config(self) -> Config:
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
        )

    def _base_session(self) -> boto3.session.Session:
        with self._lock:
            if self._session is None:
                if self._session_factory is not None:
                    self._session = self._session_factory()
                elif self._vendor_credentials is not None:
                    creds = self._vendor_credentials
                    self._session = boto3.session.Session(
                        aws_access_key_id=creds.access_key_id,
                        aws_secret_access_key=creds.secret_access_key,
                        aws_session_token=creds.session_token,
                    )
                else:
                    self._session = boto3.session.Session()
            return self._session

    @property
    def assumed_credentials(self) -> AssumedCredentials | None:
        """The cached STS credentials, when a role is configured and was assumed."""
        return self._assumed

    def _credentials(self) -> AssumedCredentials | None:
        """The role's temporary credentials, assumed again shortly before they expire."""
        if self.config.role_arn is None:
            return None
        with self._lock:
            if self._assumed is not None and time.monotonic() < self._assumed_refresh_at:
                return self._assumed
            sts = self._client("sts", self.config.region, credentials=None)
            params: dict[str, Any] = {
                "RoleArn": self.config.role_arn,
                "RoleSessionName": self.role_session_name,
                "DurationSeconds": self.role_session_seconds,
            }
            if self.config.external_id is not None:
                params["ExternalId"] = self.config.external_id
            try:
                response = sts.assume_role(**params)
            except (ClientError, BotoCoreError) as exc:
                raise self._map(exc, "sts", "AssumeRole", self.config.role_arn) from None
            raw = response["Credentials"]
            expiration = raw["Expiration"]
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=UTC)
            self._assumed = AssumedCredentials(
                access_key_id=raw["AccessKeyId"],
                secret_access_key=raw["SecretAccessKey"],
                session_token=raw["SessionToken"],
                expiration=expiration,
                role_session_name=self.role_session_name,
            )
            lifetime = (expiration - datetime.now(UTC)).total_seconds()
            self._assumed_refresh_at = time.monotonic() + max(
                0.0, lifetime - self.credential_refresh_margin
            )
            self.credential_refreshes += 1
            return self._assumed

    def _forget_credentials(self) -> None:
        with self._lock:
            self._assumed = None
            self._assumed_refresh_at = 0.0

    def _client(self, service: str, region: str, *, credentials: AssumedCredentials | None) -> Any:
        """A client for `service` in `region`, rebuilt when the credentials change."""
        with self._lock:
            cached = self._clients.get((service, region))
            if cached is not None and cached[0] is credentials:
                return cached[1]
            extra: dict[str, Any] = {}
            if credentials is not None:
                extra = {
                    "aws_access_key_id": credentials.access_key_id,
                    "aws_secret_access_key": credentials.secret_access_key,
                    "aws_session_token": credentials.session_token,
                }
            make_client: Any = self._base_session().client
            client = make_client(
                service,
                region_name=region,
                endpoint_url=self.endpoint_url,
                config=self._botocore_config(),
                **extra,
            )
            self._clients[(service, region)] = (credentials, client)
            return client

    def _endpoint(self, service: str, region: str) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        suffix = "amazonaws.com.cn" if self._parsed.partition == "aws-cn" else "amazonaws.com"
        return f"https://{service}.{region}.{suffix}"

    def _call(
        self, operation: str, target: str, region: str, call: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one KMS call with mapped errors; expired role credentials are renewed once."""
        for attempt in (1, 2):
            credentials = self._credentials()
            client = self._client("kms", region, credentials=credentials)
            try:
                return call(client)
            except ClientError as exc:
                code = _aws_message(exc)[0]
                if code in _EXPIRED and credentials is not None and attempt == 1:
                    self._forget_credentials()
                    continue
                raise self._map(exc, "kms", operation, target, region) from None
            except BotoCoreError as exc:
                raise self._map(exc, "kms", operation, target, region) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _map(
        self,
        error: ClientError | BotoCoreError,
        service: str,
        operation: str,
        target: str,
        region: str | None = None,
    ) -> KeyProviderError:
        """One AWS or botocore error as base.py's exception, in AWS terms, without secrets."""
        name = "AWS STS" if service == "sts" else "AWS KMS"
        region = region or self.config.region
        endpoint = self._endpoint(service, region)
        if isinstance(error, ClientError):
            code, message, status = _aws_message(error)
            said = f"{name} {operation} on {target} failed with {code}"
            if message:
                said += f" ({message})"
            if code in _ACCESS_DENIED:
                if service == "sts":
                    hint = (
                        "the role's trust policy must allow the vendor's AWS principal to call "
                        "sts:AssumeRole"
                        + (" with the configured external id" if self.config.external_id else "")
                    )
                else:
                    hint = f"the key policy must allow kms:{operation} for {self._principal()}"
                return AwsKeyAccessDenied(f"{said}: {hint}", code)
            if code in _REVOKED:
                hint = _HINTS.get(code, "the key is not usable in its current state")
                return AwsKeyAccessDenied(f"{said}: {hint}", code)
            if code in _INVALID:
                return AwsKeyMaterialInvalid(f"{said}: {_HINTS[code]}", code)
            if code in _TRANSIENT or status >= 500:
                hint = _HINTS.get(code, "a transient AWS error; requests are retried later")
                return AwsKeyUnavailable(f"{said}: {hint}", code)
            if code in _VENDOR_CREDENTIALS:
                return AwsKeyUnavailable(
                    f"{said}: AWS rejected the vendor's own AWS credentials; "
                    "the operator must fix them",
                    code,
                )
            return AwsKeyUnavailable(f"{said}: unexpected AWS error (HTTP {status})", code)
        if isinstance(error, ConnectTimeoutError):
            text = (
                f"could not connect to {name} at {endpoint} within the connect timeout "
                f"of {self.connect_timeout:g} s ({operation})"
            )
        elif isinstance(error, ReadTimeoutError):
            text = (
                f"{name} at {endpoint} did not answer {operation} within the read timeout "
                f"of {self.read_timeout:g} s"
            )
        elif isinstance(error, EndpointConnectionError):
            reason = str(error.kwargs.get("error", "")).rsplit(": ", 1)[-1] or "unreachable"
            text = f"could not connect to {name} at {endpoint} ({operation}): {reason}"
        elif isinstance(error, ConnectionClosedError):
            text = f"{name} at {endpoint} closed the connection during {operation}"
        elif isinstance(error, BotoConnectionError | BotoHTTPClientError):
            text = f"connection to {name} at {endpoint} failed during {operation}"
        elif isinstance(error, NoCredentialsError | PartialCredentialsError):
            text = (
                f"no usable vendor AWS credentials for {name} {operation}: "
                "the operator must configure them"
            )
        elif isinstance(error, ParamValidationError):
            # botocore's message may quote the parameters: never repeat it.
            return KeyMaterialInvalid(f"{name} {operation} refused the request parameters")
        else:
            text = f"{name} {operation} failed: {type(error).__name__}"
        return KeyUnavailable(text)

    def _principal(self) -> str:
        if self.config.role_arn:
            return f"the role {self.config.role_arn}"
        return "the vendor's AWS principal"

    # -- KeyProvider -------------------------------------------------------------
    def wrap(self, dek: bytes, context: Context) -> Wrapped:
        if not isinstance(dek, bytes | bytearray) or not 1 <= len(dek) <= _MAX_PLAINTEXT:
            raise KeyMaterialInvalid(f"a DEK to wrap is 1 to {_MAX_PLAINTEXT} bytes")
        encryption_context = _encryption_context(context)
        target = self.config.key_arn
        response = self._call(
            "Encrypt",
            target,
            self.config.region,
            lambda kms: kms.encrypt(
                KeyId=target, Plaintext=bytes(dek), EncryptionContext=encryption_context
            ),
        )
        key_arn = str(response.get("KeyId", ""))
        try:
            parse_kms_arn(key_arn, allowed_partitions=self.config.allowed_partitions)
        except InvalidArn:
            raise KeyMaterialInvalid(
                f"AWS KMS Encrypt on {target} did not name the key ARN that encrypted"
            ) from None
        return Wrapped(bytes(response["CiphertextBlob"]), key_arn)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        try:
            key = parse_kms_arn(version, allowed_partitions=self.config.allowed_partitions)
        except InvalidArn as exc:
            raise KeyMaterialInvalid(f"not an AWS KMS key version: {exc}") from None
        if key.is_alias:
            raise KeyMaterialInvalid(
                f"the recorded version {version} is an alias ARN; a key ARN was expected"
            )
        if key.partition != self._parsed.partition:
            raise KeyMaterialInvalid(
                f"the recorded key {version} is in partition {key.partition!r}, "
                f"not {self._parsed.partition!r}"
            )
        if not isinstance(wrapped, bytes | bytearray) or not 1 <= len(wrapped) <= _MAX_CIPHERTEXT:
            raise KeyMaterialInvalid(f"a wrapped key is 1 to {_MAX_CIPHERTEXT} bytes")
        encryption_context = _encryption_context(context)
        response = self._call(
            "Decrypt",
            version,
            key.region,
            lambda kms: kms.decrypt(
                CiphertextBlob=bytes(wrapped),
                KeyId=version,
                EncryptionContext=encryption_context,
            ),
        )
        return bytes(response["Plaintext"])

    def _describe_key(self) -> dict[str, Any]:
        target = self.config.key_arn
        response = self._call(
            "DescribeKey",
            target,
            self.config.region,
            lambda kms: kms.describe_key(KeyId=target),
        )
        metadata: dict[str, Any] = response["KeyMetadata"]
        with self._lock:
            self._resolved_key_arn = str(metadata["Arn"])
        return metadata

    def current_version(self) -> str:
        return str(self._describe_key()["Arn"])

    def key_state(self) -> KeyStatus:
        metadata = self._describe_key()
        state = str(metadata.get("KeyState", "Unknown"))
        return KeyStatus(
            arn=self.config.key_arn,
            state=state,
            enabled=state == "Enabled",
            pending_deletion=state in ("PendingDeletion", "PendingReplicaDeletion"),
            alias_target=str(metadata["Arn"]) if self._parsed.is_alias else None,
            deletion_date=metadata.get("DeletionDate"),
        )

    def storage_encryption_key(self) -> str | None:
        """The key ARN in use (an alias resolved), for a dedicated bucket's SSE-KMS default."""
        with self._lock:
            resolved = self._resolved_key_arn
        return resolved or self.current_version()

    can_rotate_now = True

    def rotate_now(self) -> str | None:
        """RotateKeyOnDemand: new material in the same key; older ciphertexts still decrypt."""
        arn = self.current_version()
        self._call(
            "RotateKeyOnDemand",
            arn,
            self.config.region,
            partial(_rotate_on_demand, key_arn=arn),
        )
        return None

    def health(self) -> KeyHealth:
        status = self.key_state()
        if status.pending_deletion:
            when = f" on {status.deletion_date:%Y-%m-%d}" if status.deletion_date else ""
            return KeyHealth(False, status.key_arn, f"the key is scheduled for deletion{when}")
        if not status.enabled:
            return KeyHealth(False, status.key_arn, f"the key is {status.state.lower()}")
        return KeyHealth(True, status.key_arn, "enabled", self._material_marker(status.key_arn))

    def _material_marker(self, key_arn: str) -> str:
        """The date of the key's newest material rotation, "" if never or not knowable.

        ListKeyRotations needs kms:ListKeyRotations in the key policy; without
        it (or where the API does not exist) rotation of material cannot be
        detected, which is reported as "" rather than as an outage.
        """
        newest = ""
        marker = None
        try:
            while True:
                kwargs: dict[str, Any] = {"KeyId": key_arn}
                if marker:
                    kwargs["Marker"] = marker
                response = self._call(
                    "ListKeyRotations",
                    key_arn,
                    self.config.region,
                    partial(_list_key_rotations, kwargs=kwargs),
                )
                for rotation in response.get("Rotations", []):
                    when = rotation.get("RotationDate")
                    stamp = when.isoformat() if hasattr(when, "isoformat") else str(when or "")
                    newest = max(newest, stamp)
                if not response.get("Truncated"):
                    return newest
                marker = response.get("NextMarker")
        except KeyProviderError:
            return ""

    def describe(self) -> KeyDescription:
        parsed = self._parsed
        facts: dict[str, str] = {}
        if parsed.is_alias:
            facts["Key ARN"] = self._resolved_key_arn or "resolved from the alias when used"
        else:
            facts["Key ARN"] = parsed.arn
        facts["Region"] = parsed.region
        facts["Account"] = parsed.account
        if parsed.alias_name:
            facts["Alias"] = parsed.alias_name
        if self.config.role_arn:
            facts["Role ARN"] = self.config.role_arn
        return KeyDescription(self.kind, "AWS KMS key", facts)

    # -- Save and Test -----------------------------------------------------------
    def run_checks(self, context: Context) -> list[CheckResult]:
        results: list[CheckResult] = []
        names = [CHECK_FOUND, CHECK_ENABLED, CHECK_SYMMETRIC, CHECK_ROUND_TRIP]
        if self.config.role_arn:
            names.insert(0, CHECK_ROLE)

        def skip_rest(reason: str) -> list[CheckResult]:
            done = {r.name for r in results}
            return results + [
                CheckResult(name, False, f"not run: {reason}") for name in names if name not in done
            ]

        if self.config.role_arn:
            try:
                creds = self._credentials()
            except KeyProviderError as exc:
                results.append(CheckResult(CHECK_ROLE, False, self._role_failure(exc)))
                return skip_rest("the role could not be assumed")
            session = creds.role_session_name if creds else self.role_session_name
            results.append(
                CheckResult(
                    CHECK_ROLE, True, f"Assumed {self.config.role_arn} as session {session}."
                )
            )

        try:
            metadata = self._describe_key()
        except KeyProviderError as exc:
            results.append(CheckResult(CHECK_FOUND, False, self._found_failure(exc)))
            if isinstance(exc, KeyUnavailable):
                return skip_rest("AWS KMS could not be reached")
            return skip_rest("the key could not be found")
        key_arn = str(metadata["Arn"])
        if self._parsed.is_alias:
            found = f"Alias {self._parsed.alias_name} resolves to {key_arn}."
        else:
            found = f"Found {key_arn}."
        results.append(CheckResult(CHECK_FOUND, True, found))

        enabled = _state_result(metadata)
        results.append(enabled)
        symmetric = _symmetric_result(metadata)
        results.append(symmetric)
        if not enabled.passed:
            return skip_rest("the key is not enabled")
        if not symmetric.passed:
            return skip_rest("the key is not a symmetric encryption key")

        results.append(self._round_trip(context))
        return results

    def _role_failure(self, exc: KeyProviderError) -> str:
        if _aws_code(exc) in _ACCESS_DENIED:
            condition = (
                " and a condition sts:ExternalId equal to the external id you entered"
                if self.config.external_id
                else ""
            )
            return (
                f"AWS STS denied AssumeRole on {self.config.role_arn}. In IAM, edit the role's "
                f"trust policy: allow sts:AssumeRole for the vendor's AWS account{condition}."
            )
        return str(exc)

    def _found_failure(self, exc: KeyProviderError) -> str:
        parsed = self._parsed
        code = _aws_code(exc)
        where = f"in account {parsed.account}, region {parsed.region}"
        if code == "NotFoundException":
            if parsed.is_alias:
                return (
                    f"Alias not found: {parsed.alias_name} does not exist {where}: "
                    "create it or fix the ARN."
                )
            return (
                f"Key not found: {parsed.arn} does not exist {where}: fix the key ARN "
                "(a deleted key cannot be recovered)."
            )
        if code in _ACCESS_DENIED:
            return (
                f"AWS KMS denied kms:DescribeKey on {parsed.arn}: add kms:DescribeKey, "
                f"kms:Encrypt and kms:Decrypt for {self._principal()} to the key policy."
            )
        return str(exc)

    def _round_trip(self, context: Context) -> CheckResult:
        probe = secrets.token_bytes(32)
        step = "kms:Encrypt"
        try:
            wrapped = self.wrap(probe, context)
            step = "kms:Decrypt"
            ok = self.unwrap(wrapped.blob, context, wrapped.version) == probe
        except KeyProviderError as exc:
            if _aws_code(exc) in _ACCESS_DENIED:
                return CheckResult(
                    CHECK_ROUND_TRIP,
                    False,
                    f"AWS KMS denied {step} on {self.config.key_arn}: add kms:Encrypt and "
                    f"kms:Decrypt for {self._principal()} to the key policy.",
                )
            return CheckResult(CHECK_ROUND_TRIP, False, f"{step} failed: {exc}")
        if not ok:
            return CheckResult(
                CHECK_ROUND_TRIP, False, "AWS KMS decrypted the probe to different bytes."
            )
        return CheckResult(
            CHECK_ROUND_TRIP,
            True,
            f"Encrypted and decrypted a 32-byte probe with {wrapped.version} "
            "under the encryption context.",
        )


def _encryption_context(context: Context) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("an encryption context maps text to text")
    return dict(context)


_STATE_ADVICE = {
    "Disabled": "The key is disabled: enable the key in the AWS KMS console (Key actions, Enable).",
    "PendingDeletion": (
        "The key is scheduled for deletion{when}: cancel the key deletion in the AWS KMS "
        "console (Key actions, Cancel key deletion), then enable the key."
    ),
    "PendingReplicaDeletion": (
        "This multi-Region replica key is scheduled for deletion{when}: cancel the key deletion."
    ),
    "PendingImport": (
        "The key has no key material: import key material in the AWS KMS console "
        "(Key material tab, Import key material)."
    ),
    "Unavailable": (
        "The key is unavailable: its custom key store is disconnected; connect the "
        "custom key store."
    ),
    "Creating": "The key is still being created: try again in a minute.",
    "Updating": "The key is being updated: try again in a minute.",
}


def _state_result(metadata: dict[str, Any]) -> CheckResult:
    state = str(metadata.get("KeyState", "Unknown"))
    if state == "Enabled":
        return CheckResult(CHECK_ENABLED, True, "The key is enabled.")
    deletion = metadata.get("DeletionDate")
    when = f" on {deletion:%Y-%m-%d}" if isinstance(deletion, datetime) else ""
    advice = _STATE_ADVICE.get(state, f"The key state is {state}: it must be Enabled.")
    return CheckResult(CHECK_ENABLED, False, advice.format(when=when))


def _key_family(spec: str, usage: str) -> str:
    if spec.startswith("RSA_"):
        return f"an asymmetric RSA key ({spec}, key usage {usage})"
    if spec.startswith("ECC_"):
        return f"an asymmetric elliptic-curve key ({spec}, key usage {usage})"
    if spec.startswith("HMAC_"):
        return f"an HMAC key ({spec}, key usage {usage})"
    if spec == "SYMMETRIC_DEFAULT":
        return f"a symmetric key with key usage {usage}"
    return f"a {spec} key (key usage {usage})"


def _symmetric_result(metadata: dict[str, Any]) -> CheckResult:
    spec = str(metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec") or "unknown")
    usage = str(metadata.get("KeyUsage", "unknown"))
    if spec == "SYMMETRIC_DEFAULT" and usage == "ENCRYPT_DECRYPT":
        return CheckResult(
            CHECK_SYMMETRIC, True, "Symmetric key (SYMMETRIC_DEFAULT) for encrypt and decrypt."
        )
    return CheckResult(
        CHECK_SYMMETRIC,
        False,
        f"The key is {_key_family(spec, usage)}: Keyward needs a symmetric encryption key. "
        "Create a KMS key with key type Symmetric and key usage Encrypt and decrypt, and use "
        "its ARN (or point the alias at it).",
    )
