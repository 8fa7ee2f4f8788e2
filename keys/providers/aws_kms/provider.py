"""The AWS KMS provider: wrap, unwrap, health, rotation, and the Save and Test checks."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import boto3.session
from botocore.exceptions import BotoCoreError, ClientError

from keys.providers.aws_kms.config import (
    AwsKmsConfig,
    InvalidArn,
    ParsedArn,
    VendorCredentials,
    parse_kms_arn,
)
from keys.providers.aws_kms.errors import (
    ACCESS_DENIED,
    EXPIRED,
    aws_code,
    aws_error,
    aws_message,
)
from keys.providers.aws_kms.transport import (
    AssumedCredentials,
    assume_role,
    botocore_config,
    endpoint_for,
    make_client,
    vendor_session,
)
from keys.providers.base import (
    CheckResult,
    Context,
    KeyDescription,
    KeyHealth,
    KeyMaterialInvalid,
    KeyProvider,
    KeyProviderError,
    KeyUnavailable,
    Wrapped,
)

CHECK_ROLE = "Role assumed"
CHECK_FOUND = "Key found"
CHECK_ENABLED = "Key enabled"
CHECK_SYMMETRIC = "Symmetric encryption key"
CHECK_ROUND_TRIP = "Round trip"

_MAX_PLAINTEXT = 4096  # KMS Encrypt accepts at most 4096 bytes of plaintext
_MAX_CIPHERTEXT = 6144  # and Decrypt at most 6144 bytes of ciphertext
# How long a key policy that denied kms:ReEncrypt is believed (`reencrypt_refused`).
_REENCRYPT_DENIED_SECONDS = 3600.0


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
    remote = True

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
        # Until then, no ReEncrypt: the key policy denied it (`reencrypt_refused`).
        self._reencrypt_denied_until = 0.0

    def __repr__(self) -> str:
        role = f" role={self.config.role_arn}" if self.config.role_arn else ""
        return f"<AwsKmsProvider key={self.config.key_arn}{role}>"

    # -- clients and credentials ---------------------------------------------------
    def _base_session(self) -> boto3.session.Session:
        with self._lock:
            if self._session is None:
                self._session = vendor_session(self._session_factory, self._vendor_credentials)
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
            try:
                assumed = assume_role(
                    sts,
                    role_arn=self.config.role_arn,
                    session_name=self.role_session_name,
                    duration_seconds=self.role_session_seconds,
                    external_id=self.config.external_id,
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._map(exc, "sts", "AssumeRole", self.config.role_arn) from None
            self._assumed = assumed
            lifetime = (assumed.expiration - datetime.now(UTC)).total_seconds()
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
            client = make_client(
                self._base_session(),
                service,
                region,
                endpoint_url=self.endpoint_url,
                config=botocore_config(
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_attempts=self.max_attempts,
                ),
                credentials=credentials,
            )
            self._clients[(service, region)] = (credentials, client)
            return client

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
                code = aws_message(exc)[0]
                if code in EXPIRED and credentials is not None and attempt == 1:
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
        """One AWS or botocore error as base.py's exception (see `errors.aws_error`)."""
        return aws_error(
            error,
            service,
            operation,
            target,
            endpoint=endpoint_for(
                service,
                region or self.config.region,
                partition=self._parsed.partition,
                endpoint_url=self.endpoint_url,
            ),
            principal=self._principal(),
            with_external_id=bool(self.config.external_id),
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )

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
        return self._wrapped(response, "Encrypt", target)

    def _recorded_key(self, wrapped: bytes, version: str) -> ParsedArn:
        """The key ARN a wrapped key was recorded under, checked before any call."""
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
        return key

    def can_reencrypt(self, version: str, into: KeyProvider) -> bool:
        """KMS ReEncrypt works between two keys that one principal reaches (the same
        role and external id, or the vendor's own principal for both) in one
        region: a rotation of one key source, or a move between two sources of
        the tenant on the same role."""
        if time.monotonic() < self._reencrypt_denied_until or into.kind != self.kind:
            return False
        # `into` may be the registry's wrapper around the provider (circuit, usage):
        # its attributes are the provider's.
        other = cast(AwsKmsProvider, into)
        if (other.config.role_arn, other.config.external_id, other.endpoint_url) != (
            self.config.role_arn,
            self.config.external_id,
            self.endpoint_url,
        ):
            return False
        try:
            key = parse_kms_arn(version, allowed_partitions=self.config.allowed_partitions)
        except InvalidArn:
            return False  # `unwrap` says what is wrong with it
        return key.region == other.config.region

    def reencrypt(
        self, wrapped: bytes, context: Context, version: str, *, into: KeyProvider
    ) -> Wrapped:
        """KMS ReEncrypt: one call instead of Decrypt and Encrypt, and the DEK is
        decrypted and encrypted again inside KMS, never sent to Keyward."""
        key = self._recorded_key(wrapped, version)
        other = cast(AwsKmsProvider, into)
        target = other.config.key_arn
        encryption_context = _encryption_context(context)
        response = self._call(
            "ReEncrypt",
            version,
            key.region,
            lambda kms: kms.re_encrypt(
                CiphertextBlob=bytes(wrapped),
                SourceKeyId=version,
                SourceEncryptionContext=encryption_context,
                DestinationKeyId=target,
                DestinationEncryptionContext=encryption_context,
            ),
        )
        return other._wrapped(response, "ReEncrypt", target)

    def reencrypt_refused(self, error: KeyProviderError) -> None:
        """A key policy written before Keyward asked for kms:ReEncrypt* denies it: no
        ReEncrypt for an hour, then it is tried again (the customer may have added
        it). Any other refusal is about one key, and says nothing of the next."""
        if aws_code(error) in ACCESS_DENIED:
            self._reencrypt_denied_until = time.monotonic() + _REENCRYPT_DENIED_SECONDS

    def _wrapped(self, response: dict[str, Any], operation: str, target: str) -> Wrapped:
        key_arn = str(response.get("KeyId", ""))
        try:
            parse_kms_arn(key_arn, allowed_partitions=self.config.allowed_partitions)
        except InvalidArn:
            raise KeyMaterialInvalid(
                f"AWS KMS {operation} on {target} did not name the key ARN that encrypted"
            ) from None
        return Wrapped(bytes(response["CiphertextBlob"]), key_arn)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        key = self._recorded_key(wrapped, version)
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
        if aws_code(exc) in ACCESS_DENIED:
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
        code = aws_code(exc)
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
        if code in ACCESS_DENIED:
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
            if aws_code(exc) in ACCESS_DENIED:
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
