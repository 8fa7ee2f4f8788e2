"""What the customer configures for AWS KMS: key, alias and role ARNs, the external id.

Each is validated strictly before anything is saved; the `Invalid*` errors say
what is wrong. The vendor's own credentials are configured here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_PARTITIONS: tuple[str, ...] = ("aws", "aws-cn", "aws-us-gov")


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
