"""The Azure Key Vault provider: wrap, unwrap, health, and the Save and Test checks."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient

from keys.providers.azure_keyvault.config import (
    MIN_RSA_BITS,
    VERSION_RE,
    AzureCredentials,
    AzureKeyVaultConfig,
    InvalidAzureConfig,
    validate_key_version,
)
from keys.providers.azure_keyvault.errors import RBAC_ADVICE, error_info, mapped_call, tag_error
from keys.providers.azure_keyvault.transport import CLOUDS, client_kwargs, make_credential
from keys.providers.azure_keyvault.wrapping import (
    ALG,
    BLOB_SIGNED,
    BLOB_VERSION,
    DEK_SIZE,
    ORIGIN_VERSION_SIZE,
    RSA_SIZES,
    TAG_SIZE,
    encoded_context,
    origin_mac,
    tag_for,
    tag_v2,
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
    OriginKeys,
    Wrapped,
)

CHECK_CREDENTIAL = "Credential accepted"
CHECK_FOUND = "Key found"
CHECK_ENABLED = "Key enabled"
CHECK_IN_DATE = "Key in date"
CHECK_RSA = "RSA key of 2048 bits or more"
CHECK_OPS = "Wrap and unwrap allowed"
CHECK_ROUND_TRIP = "Round trip"
CHECK_NAMES = (
    CHECK_CREDENTIAL,
    CHECK_FOUND,
    CHECK_ENABLED,
    CHECK_IN_DATE,
    CHECK_RSA,
    CHECK_OPS,
    CHECK_ROUND_TRIP,
)

T = TypeVar("T")


@dataclass(frozen=True)
class _Bundle:
    """What the provider reads from a key version."""

    version: str
    key: KeyVaultKey


def _usability_problem(key: KeyVaultKey, now: datetime | None = None) -> str | None:
    """Why a key version cannot wrap or unwrap now (disabled, out of date, ops), or None."""
    props = key.properties
    moment = now or datetime.now(UTC)
    if props.enabled is False:
        return f"the key version {props.version} is disabled"
    if props.expires_on is not None and moment >= props.expires_on:
        return f"the key version {props.version} expired on {props.expires_on:%Y-%m-%d %H:%M} UTC"
    if props.not_before is not None and moment < props.not_before:
        return (
            f"the key version {props.version} is not valid before "
            f"{props.not_before:%Y-%m-%d %H:%M} UTC"
        )
    missing = _missing_ops(key)
    if missing:
        return f"the key does not allow {' and '.join(missing)}"
    return None


def _text(value: Any) -> str:
    """An SDK enum member's wire value (str() of a str-Enum is its qualified name)."""
    return str(getattr(value, "value", value))


def _missing_ops(key: KeyVaultKey) -> list[str]:
    ops = {_text(op) for op in (key.key_operations or [])}
    return [op for op in ("wrapKey", "unwrapKey") if op not in ops]


def _rsa_bits(key: KeyVaultKey) -> int:
    n = getattr(key.key, "n", None)
    return int.from_bytes(bytes(n), "big").bit_length() if n else 0


def _is_rsa(key: KeyVaultKey) -> bool:
    return _text(key.key_type) in ("RSA", "RSA-HSM")


NOT_OURS = (
    "not a DEK wrapped by Keyward under an Azure Key Vault key for this context, or it was altered"
)


class AzureKeyVaultProvider(KeyProvider):
    """An RSA key in the customer's Azure Key Vault that wraps and unwraps DEKs."""

    kind = "azure_keyvault"
    remote = True

    def __init__(
        self,
        config: AzureKeyVaultConfig,
        credentials: AzureCredentials,
        *,
        authority_host: str | None = None,
        connection_verify: str | bool = True,
        timeout: float = 10.0,
        credential: Any | None = None,
        origin: OriginKeys,
        accept_unsigned: bool = False,
    ) -> None:
        """`origin`: the vendor keys that sign every blob this provider makes;
        `accept_unsigned`: blobs of version 1 (made before signing) still unwrap,
        while the source has any left to rewrap."""
        if not isinstance(config, AzureKeyVaultConfig):
            raise TypeError("config must be an AzureKeyVaultConfig")
        if not isinstance(credentials, AzureCredentials):
            raise TypeError("credentials must be AzureCredentials")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.config = config
        self.credentials = credentials
        self._origin = origin
        self._accept_unsigned = accept_unsigned
        self.timeout = float(timeout)
        self.connection_verify = connection_verify
        suffix = next((s for s in CLOUDS if config.host.endswith(s)), None)
        self._real_vault = suffix is not None
        self._scope, default_authority = CLOUDS.get(suffix or "", CLOUDS[".vault.azure.net"])
        self.authority_host = (authority_host or default_authority).rstrip("/")
        self._injected = credential
        self._lock = threading.Lock()
        self._credential_obj: Any | None = credential
        self._key_client: KeyClient | None = None
        self._crypto: dict[str, CryptographyClient] = {}
        self._bundles: dict[str, KeyVaultKey] = {}

    # -- clients -----------------------------------------------------------------
    def _credential(self) -> Any:
        with self._lock:
            if self._credential_obj is not None:
                return self._credential_obj
            credential = make_credential(
                self.config,
                self.credentials,
                authority_host=self.authority_host,
                connection_verify=self.connection_verify,
                timeout=self.timeout,
            )
            self._credential_obj = credential
            return credential

    def _client_kwargs(self) -> dict[str, Any]:
        return client_kwargs(
            connection_verify=self.connection_verify,
            timeout=self.timeout,
            verify_challenge_resource=self._real_vault,
        )

    def _keys(self) -> KeyClient:
        credential = self._credential()
        with self._lock:
            if self._key_client is None:
                self._key_client = KeyClient(
                    self.config.vault_url, credential, **self._client_kwargs()
                )
            return self._key_client

    def _crypto_for(self, version: str) -> CryptographyClient:
        credential = self._credential()
        with self._lock:
            client = self._crypto.get(version)
            if client is None:
                # From the key we already read (no extra GET), else from its id.
                source: KeyVaultKey | str = self._bundles.get(version) or (
                    f"{self.config.vault_url}/keys/{self.config.key_name}/{version}"
                )
                client = CryptographyClient(source, credential, **self._client_kwargs())
                self._crypto[version] = client
            return client

    def _call(self, operation: str, target: str, fn: Callable[[], T]) -> T:
        """One call to Key Vault or Entra, its errors mapped onto base.py's."""
        return mapped_call(
            operation,
            target,
            fn,
            vault_url=self.config.vault_url,
            authority_host=self.authority_host,
            tenant_id=self.config.tenant_id,
        )

    # -- reads -------------------------------------------------------------------
    def _get_key(self, version: str | None) -> KeyVaultKey:
        name = self.config.key_name
        target = f"{name}/{version}" if version else name
        client = self._keys()
        key = self._call("get key", target, lambda: client.get_key(name, version=version))
        read = key.properties.version
        if not read or not VERSION_RE.fullmatch(read):
            raise KeyMaterialInvalid(f"Key Vault returned key {target} without a valid version")
        with self._lock:
            self._bundles[read] = key
        return key

    def _token(self) -> None:
        credential = self._credential()
        self._call(
            "get token",
            self.config.client_id,
            lambda: credential.get_token(self._scope, enable_cae=True),
        )

    # -- KeyProvider -------------------------------------------------------------
    def wrap(self, dek: bytes, context: Context) -> Wrapped:
        return self._wrap_under(self.config.key_version, dek, context)

    def _wrap_under(self, key_version: str | None, dek: bytes, context: Context) -> Wrapped:
        if not isinstance(dek, bytes | bytearray) or len(dek) != DEK_SIZE:
            raise KeyMaterialInvalid(f"a DEK to wrap is {DEK_SIZE} bytes")
        context_bytes = encoded_context(context)
        key = self._get_key(key_version)
        version = str(key.properties.version)
        if not _is_rsa(key) or _rsa_bits(key) < MIN_RSA_BITS:
            raise KeyMaterialInvalid(
                f"the key {self.config.key_name}/{version} is not an RSA key of 2048 bits or more"
            )
        problem = _usability_problem(key)
        if problem:
            raise tag_error(KeyAccessDenied(problem), source="keyvault")
        try:
            local = CryptographyClient.from_jwk(key.key)
            ciphertext = bytes(local.wrap_key(ALG, bytes(dek)).encrypted_key)
        except (ValueError, NotImplementedError) as exc:
            raise KeyMaterialInvalid(
                f"the key {self.config.key_name}/{version} cannot wrap: {exc}"
            ) from None
        if len(ciphertext) not in RSA_SIZES:
            raise KeyMaterialInvalid("RSA-OAEP-256 gave an unexpected ciphertext size")
        return Wrapped(
            self._signed(ciphertext + tag_v2(bytes(dek), context_bytes, ciphertext), context_bytes),
            version,
        )

    def _signed(self, body: bytes, context_bytes: bytes) -> bytes:
        """A version 2 blob: `body` (RSA ciphertext and tag) signed under the current
        vendor origin key."""
        origin_version, origin_key = self._origin.current()
        signed = BLOB_SIGNED + origin_version.to_bytes(ORIGIN_VERSION_SIZE, "big") + body
        return signed + origin_mac(origin_key, context_bytes, signed)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
            raise KeyMaterialInvalid("not a Key Vault key version (32 hexadecimal characters)")
        if not isinstance(wrapped, bytes | bytearray) or not wrapped:
            raise KeyMaterialInvalid(NOT_OURS)
        context_bytes = encoded_context(context)
        blob = bytes(wrapped)
        if blob[:1] == BLOB_SIGNED:
            ciphertext = self._verified_origin(blob, context_bytes)
            tag, tag_of = blob[-2 * TAG_SIZE : -TAG_SIZE], tag_v2
        elif blob[:1] == BLOB_VERSION and self._accept_unsigned:
            if len(blob) - 1 - TAG_SIZE not in RSA_SIZES:
                raise KeyMaterialInvalid(NOT_OURS)
            ciphertext, tag, tag_of = blob[1:-TAG_SIZE], blob[-TAG_SIZE:], tag_for
        else:
            raise KeyMaterialInvalid(NOT_OURS)
        version = version.lower()
        client = self._crypto_for(version)
        result = self._call(
            "unwrapKey",
            f"{self.config.key_name}/{version}",
            lambda: client.unwrap_key(ALG, ciphertext),
        )
        dek = bytes(result.key)
        if len(dek) != DEK_SIZE or not hmac.compare_digest(
            tag_of(dek, context_bytes, ciphertext), tag
        ):
            raise KeyMaterialInvalid(
                "the wrapped DEK does not belong to this context, or it was altered"
            )
        return dek

    def _verified_origin(self, blob: bytes, context_bytes: bytes) -> bytes:
        """The RSA ciphertext of a version 2 blob whose origin MAC verifies, before
        any call to Key Vault: a blob Keyward did not make goes no further."""
        head = 1 + ORIGIN_VERSION_SIZE
        if len(blob) - head - 2 * TAG_SIZE not in RSA_SIZES:
            raise KeyMaterialInvalid(NOT_OURS)
        origin_key = self._origin.get(int.from_bytes(blob[1:head], "big"))
        signed, mac = blob[:-TAG_SIZE], blob[-TAG_SIZE:]
        if not hmac.compare_digest(origin_mac(origin_key, context_bytes, signed), mac):
            raise KeyMaterialInvalid(NOT_OURS)
        return blob[head : -2 * TAG_SIZE]

    def rewrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        """An unsigned (version 1) blob: Key Vault unwraps it, then it is wrapped
        and signed under the same key version."""
        dek = self.unwrap(wrapped, context, version)
        rewrapped = self._wrap_under(version.lower(), dek, context)
        del dek
        return rewrapped.blob

    def resign(self, wrapped: bytes, context: Context) -> bytes:
        """A signed blob signed again under the current origin key, with no call to
        Key Vault: its ciphertext and tag stay as they are."""
        context_bytes = encoded_context(context)
        blob = bytes(wrapped)
        if blob[:1] != BLOB_SIGNED:
            raise KeyMaterialInvalid(NOT_OURS)
        self._verified_origin(blob, context_bytes)
        return self._signed(blob[1 + ORIGIN_VERSION_SIZE : -TAG_SIZE], context_bytes)

    def vendor_root_version(self, wrapped: bytes) -> int | None:
        blob = bytes(wrapped)
        if blob[:1] != BLOB_SIGNED or len(blob) < 1 + ORIGIN_VERSION_SIZE:
            return None
        return int.from_bytes(blob[1 : 1 + ORIGIN_VERSION_SIZE], "big")

    def needs_rewrap(self, wrapped: bytes) -> bool:
        """Version 1: unsigned, read only while the source still accepts it."""
        return bytes(wrapped)[:1] != BLOB_SIGNED

    def current_version(self) -> str:
        if self.config.key_version:
            return self.config.key_version
        return str(self._get_key(None).properties.version)

    def prepare_enable(self) -> dict[str, str]:
        """Pin the version current now: a version added later waits for a confirmation."""
        return {"key_version": self.current_version()}

    def pin_version(self, version: str) -> dict[str, str]:
        return {"key_version": validate_key_version(version)}

    def health(self) -> KeyHealth:
        """The key's current version, and whether the version wraps use can be used now."""
        pinned = self.config.key_version
        try:
            current = self._get_key(None)
        except KeyAccessDenied as exc:
            if error_info(exc, "status") == 404:
                return KeyHealth(False, pinned or "", f"the key {self.config.key_name} was deleted")
            if error_info(exc, "code") in ("KeyDisabled", "KeyExpired", "KeyNotYetValid"):
                return KeyHealth(False, pinned or "", str(exc))
            raise
        version = str(current.properties.version)
        target = current
        if pinned and pinned != version:
            try:
                target = self._get_key(pinned)
            except KeyAccessDenied as exc:
                if error_info(exc, "status") == 404:
                    return KeyHealth(False, version, f"the pinned key version {pinned} was deleted")
                raise
        problem = _usability_problem(target)
        if problem is None and not (_is_rsa(target) and _rsa_bits(target) >= MIN_RSA_BITS):
            problem = "the key is not an RSA key of 2048 bits or more"
        return KeyHealth(problem is None, version, problem or "enabled")

    def describe(self) -> KeyDescription:
        config = self.config
        facts = {
            "Vault": config.vault_url,
            "Key name": config.key_name,
            "Key version": config.key_version or "the key's current version",
            "Directory (tenant) ID": config.tenant_id,
            "Application (client) ID": config.client_id,
            "Credential": self.credentials.credential_type,
        }
        if self.credentials.client_certificate_pem is not None:
            try:
                facts["Certificate thumbprint"] = self.credentials.thumbprint or ""
            except InvalidAzureConfig:
                facts["Certificate thumbprint"] = "unreadable"
        return KeyDescription(self.kind, "Azure Key Vault key", facts)

    # -- Save and Test -----------------------------------------------------------
    def run_checks(self, context: Context) -> list[CheckResult]:
        results: list[CheckResult] = []

        def skip_rest(reason: str) -> list[CheckResult]:
            done = {r.name for r in results}
            return results + [
                CheckResult(name, False, f"not run: {reason}")
                for name in CHECK_NAMES
                if name not in done
            ]

        try:
            self._token()
        except KeyProviderError as exc:
            results.append(CheckResult(CHECK_CREDENTIAL, False, self._credential_failure(exc)))
            if isinstance(exc, KeyUnavailable):
                return skip_rest("Microsoft Entra ID could not be reached")
            return skip_rest("the credential was not accepted")
        results.append(
            CheckResult(
                CHECK_CREDENTIAL,
                True,
                f"Microsoft Entra ID issued a token to application {self.config.client_id} "
                f"in directory {self.config.tenant_id} ({self.credentials.credential_type}).",
            )
        )

        try:
            key = self._get_key(self.config.key_version)
        except KeyProviderError as exc:
            results.append(CheckResult(CHECK_FOUND, False, self._found_failure(exc)))
            if isinstance(exc, KeyUnavailable):
                return skip_rest("Key Vault could not be reached")
            return skip_rest("the key could not be read")
        version = str(key.properties.version)
        results.append(
            CheckResult(
                CHECK_FOUND,
                True,
                f"Found key {self.config.key_name} version {version} in {self.config.vault_url}.",
            )
        )
        checks = [
            self._enabled_result(key),
            self._in_date_result(key),
            self._rsa_result(key),
            self._ops_result(key),
        ]
        results.extend(checks)
        failed = [c.name for c in checks if not c.passed]
        if failed:
            return skip_rest(f"{failed[0]} failed")
        results.append(self._round_trip(context))
        return results

    def _az(self, args: str) -> str:
        return (
            f"az keyvault key set-attributes --vault-name {self.config.vault_name} "
            f"--name {self.config.key_name} {args}"
        )

    def _credential_failure(self, exc: KeyProviderError) -> str:
        code = error_info(exc, "code")
        app = self.config.client_id
        if isinstance(exc, KeyUnavailable):
            return f"{exc}."
        if code in ("7000215", "7000222", "700027", "7000216", "refused") and (
            "AADSTS700016" not in str(exc)
        ):
            what = (
                "client secret's Value (not its Secret ID)"
                if self.credentials.client_secret is not None
                else "certificate (upload its public part to the app registration)"
            )
            return (
                f"{exc}. In the Azure portal, open App registrations, application {app}, "
                f"Certificates & secrets: check the {what} and that it is not expired."
            )
        if code == "700016":
            return (
                f"{exc}. The application {app} is not registered in directory "
                f"{self.config.tenant_id}: check the Application (client) ID and the Directory "
                "(tenant) ID, and that the app's enterprise application exists in that directory."
            )
        if code == "unknown_tenant":
            return f"{exc} (Microsoft Entra ID, Overview, Tenant ID)."
        return str(exc)

    def _found_failure(self, exc: KeyProviderError) -> str:
        status = error_info(exc, "status")
        target = self.config.key_name + (
            f" version {self.config.key_version}" if self.config.key_version else ""
        )
        if status == 404:
            return (
                f"Key not found: {self.config.vault_url} has no key {target}. Check the key name "
                "and the vault URL (a deleted key must be recovered in Azure first)."
            )
        if status == 403 and error_info(exc, "code") not in ("KeyDisabled", "KeyExpired"):
            return f"Key Vault denied reading the key {target}: {RBAC_ADVICE}."
        if isinstance(exc, KeyUnavailable):
            return f"{exc}."
        if error_info(exc, "code") == "other_tenant":
            return str(exc) + "."
        return str(exc)

    def _enabled_result(self, key: KeyVaultKey) -> CheckResult:
        version = key.properties.version
        if key.properties.enabled is False:
            return CheckResult(
                CHECK_ENABLED,
                False,
                f"The key version {version} is disabled: enable it in the Azure portal (Keys, "
                f"{self.config.key_name}, the version, Enabled) or with "
                f"{self._az('--enabled true')}.",
            )
        return CheckResult(CHECK_ENABLED, True, f"The key version {version} is enabled.")

    def _in_date_result(self, key: KeyVaultKey) -> CheckResult:
        props = key.properties
        now = datetime.now(UTC)
        if props.expires_on is not None and now >= props.expires_on:
            return CheckResult(
                CHECK_IN_DATE,
                False,
                f"The key expired on {props.expires_on:%Y-%m-%d %H:%M} UTC: set a later "
                f"expiration date ({self._az('--expires <date>')}) or create a new version.",
            )
        if props.not_before is not None and now < props.not_before:
            return CheckResult(
                CHECK_IN_DATE,
                False,
                f"The key is not valid before {props.not_before:%Y-%m-%d %H:%M} UTC: wait until "
                f"then or change its activation date ({self._az('--not-before <date>')}).",
            )
        until = f" until {props.expires_on:%Y-%m-%d}" if props.expires_on else ""
        return CheckResult(CHECK_IN_DATE, True, f"The key is valid now{until}.")

    def _rsa_result(self, key: KeyVaultKey) -> CheckResult:
        kty = _text(key.key_type)
        bits = _rsa_bits(key)
        if _is_rsa(key) and bits >= MIN_RSA_BITS:
            return CheckResult(CHECK_RSA, True, f"{kty} key of {bits} bits.")
        what = f"an {kty} key of {bits} bits" if _is_rsa(key) else f"an {kty} key"
        return CheckResult(
            CHECK_RSA,
            False,
            f"The key is {what}: create an RSA or RSA-HSM key of 2048, 3072 or 4096 bits "
            "and enter its name.",
        )

    def _ops_result(self, key: KeyVaultKey) -> CheckResult:
        missing = _missing_ops(key)
        if missing:
            allowed = ", ".join(_text(op) for op in (key.key_operations or [])) or "none"
            return CheckResult(
                CHECK_OPS,
                False,
                f"The key does not allow {' and '.join(missing)} (allowed: {allowed}): enable the "
                "Wrap Key and Unwrap Key operations on the key "
                f"({self._az('--ops wrapKey unwrapKey ...')}).",
            )
        return CheckResult(CHECK_OPS, True, "The key allows wrapKey and unwrapKey.")

    def _round_trip(self, context: Context) -> CheckResult:
        probe = secrets.token_bytes(DEK_SIZE)
        step = "wrap"
        try:
            wrapped = self.wrap(probe, context)
            step = "unwrap"
            ok = self.unwrap(wrapped.blob, context, wrapped.version) == probe
        except KeyProviderError as exc:
            status, code = error_info(exc, "status"), error_info(exc, "code")
            if status == 403 and code == "KeyOperationForbidden":
                advice = (
                    "enable the Wrap Key and Unwrap Key operations on the key "
                    f"({self._az('--ops wrapKey unwrapKey ...')})"
                )
                return CheckResult(CHECK_ROUND_TRIP, False, f"Key Vault refused {step}: {advice}.")
            if status == 403:
                return CheckResult(
                    CHECK_ROUND_TRIP,
                    False,
                    f"Key Vault denied {step} (RSA-OAEP-256) on {self.config.key_name}: "
                    f"{RBAC_ADVICE}.",
                )
            if isinstance(exc, KeyUnavailable):
                return CheckResult(
                    CHECK_ROUND_TRIP,
                    False,
                    f"{step} failed: {exc}.",
                )
            return CheckResult(CHECK_ROUND_TRIP, False, f"{step} failed: {exc}")
        if not ok:
            return CheckResult(
                CHECK_ROUND_TRIP, False, "Key Vault unwrapped the probe to different bytes."
            )
        return CheckResult(
            CHECK_ROUND_TRIP,
            True,
            f"Wrapped and unwrapped a 32-byte probe with RSA-OAEP-256 under version "
            f"{wrapped.version}, bound to the context.",
        )
