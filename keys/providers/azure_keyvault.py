"""A customer's Azure Key Vault key as the KEK (BYOKV), through azure-keyvault-keys.

Framework-free: the configuration arrives as plain values (`AzureKeyVaultConfig`,
`AzureCredentials`), and nothing here imports Django.

- The customer gives a vault URL, a key name (optionally a pinned key version),
  their Microsoft Entra directory (tenant) id, and an app registration: its
  application (client) id and a client secret or a client certificate. Every
  value is validated strictly before anything is saved or any connection is
  made (`validate_vault_url` is the SSRF guard: https, port 443, a host under
  one of the allowed Key Vault suffixes, never an IP literal).
- Tokens come from Entra through azure-identity (`ClientSecretCredential` or
  `CertificateCredential`), for the vault's own resource.
- `wrap` reads the key (the pinned version, else the current one), refuses a
  disabled, expired, not-yet-valid, non-RSA or wrap-less key, and wraps the
  32-byte DEK with RSA-OAEP-256 locally with the public key (as the SDK's
  CryptographyClient does). RSA-OAEP has no associated data, so the blob is
  `0x01 || rsa_ciphertext || tag`, tag = HMAC-SHA256(key=DEK,
  b"keyward azure wrap v1" || encode_context(context) || rsa_ciphertext):
  only someone holding the DEK can make a valid tag, so after Key Vault
  unwraps, a tag that does not verify (another context, altered bytes) is
  refused. The version recorded is the Key Vault version id (the last part of
  the key id); `unwrap` sends the ciphertext to exactly that version.
- Errors map onto base.py's contract:
  * `KeyAccessDenied` (the customer cut access): Key Vault 401 (token refused)
    and 403 (RBAC role or access policy missing; a disabled, expired or
    not-yet-valid key; an operation not enabled on the key), 404 (key or
    version deleted or never there), and Entra refusing the credential
    (invalid_client such as AADSTS7000215 for a wrong secret, an unknown app
    AADSTS700016, an unknown tenant AADSTS90002, a vault in another tenant).
    Messages keep Entra's and Key Vault's own first line.
  * `KeyUnavailable` (transient): timeouts, refused or broken connections,
    408, 429 and 5xx from Key Vault or Entra, and any error not listed: it
    keeps the tenant degraded (caches serve) instead of revoking it on a guess.
  * `KeyMaterialInvalid`: Key Vault answering 400 (BadParameter: a tampered or
    foreign ciphertext), a blob that is not ours, a DEK that is not 32 bytes,
    a tag that does not verify, a key that is not RSA of 2048 bits or more.
- Retries are azure-core's, bounded: at most two retries with a short
  exponential backoff; a Retry-After longer than a few seconds is not waited
  for (the caller retries later); every request has connect and read timeouts
  of `timeout` seconds.
- Challenge resource verification (the SDK checking that the vault's 401
  challenge names a resource on the vault's own domain) stays on for every
  real Key Vault suffix; it is turned off only for a vault host outside
  `DEFAULT_VAULT_SUFFIXES`, which `validate_vault_url` admits only for the
  loopback test server (`allow_loopback_port`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

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
from keys.providers.context import encode_context

DEFAULT_VAULT_SUFFIXES: tuple[str, ...] = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.azure.net",
    ".managedhsm.azure.cn",
    ".managedhsm.usgovcloudapi.net",
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

RBAC_ADVICE = (
    "grant the application the Key Vault Crypto Service Encryption User role (RBAC) "
    "or an access policy with Get, Wrap Key, Unwrap Key"
)

_BLOB_VERSION = b"\x01"
_TAG_LABEL = b"keyward azure wrap v1"
_TAG_SIZE = 32
_DEK_SIZE = 32
_RSA_SIZES = (256, 384, 512)  # Key Vault RSA keys: 2048, 3072 or 4096 bits
_MIN_RSA_BITS = 2048
_MAX_PEM = 64 * 1024
_ALG = KeyWrapAlgorithm.rsa_oaep_256

# Token scope and Entra authority per Key Vault suffix (a sovereign cloud signs in at its own host).
_CLOUDS: dict[str, tuple[str, str]] = {
    ".vault.azure.net": ("https://vault.azure.net/.default", "login.microsoftonline.com"),
    ".vault.azure.cn": ("https://vault.azure.cn/.default", "login.chinacloudapi.cn"),
    ".vault.usgovcloudapi.net": (
        "https://vault.usgovcloudapi.net/.default",
        "login.microsoftonline.us",
    ),
    ".managedhsm.azure.net": ("https://managedhsm.azure.net/.default", "login.microsoftonline.com"),
    ".managedhsm.azure.cn": ("https://managedhsm.azure.cn/.default", "login.chinacloudapi.cn"),
    ".managedhsm.usgovcloudapi.net": (
        "https://managedhsm.usgovcloudapi.net/.default",
        "login.microsoftonline.us",
    ),
}
_WELL_KNOWN_AUTHORITIES = frozenset(
    {
        "login.microsoftonline.com",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.us",
    }
)

T = TypeVar("T")


# -- configuration ---------------------------------------------------------------


class InvalidAzureConfig(ValueError):
    """An Azure Key Vault setting is malformed; `field` names the form field."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def _show(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# A label that makes a URL parser read the host as IPv4: 2852039166, 0xa9fea9fe, 0251, 127.1
_NUMERIC_LABEL_RE = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.ASCII)
_VAULT_NAME_RE = re.compile(r"[a-z][a-z0-9-]{1,22}[a-z0-9]", re.ASCII)
_KEY_NAME_RE = re.compile(r"[0-9A-Za-z-]{1,127}", re.ASCII)
_VERSION_RE = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
_GUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)
_URL_EXAMPLE = "https://<vault-name>.vault.azure.net"


def _url_error(message: str) -> InvalidAzureConfig:
    return InvalidAzureConfig(message, field="vault_url")


def _normal_suffixes(allowed_suffixes: Sequence[str]) -> list[str]:
    if isinstance(allowed_suffixes, str):
        allowed_suffixes = (allowed_suffixes,)
    return ["." + s.strip().lower().strip(".") for s in allowed_suffixes if s.strip(" .")]


def validate_vault_url(
    value: str,
    *,
    allowed_suffixes: Sequence[str],
    allow_loopback_port: int | None = None,
) -> str:
    """Return the normalised ``https://<host>`` of a Key Vault URL, or raise InvalidAzureConfig.

    The host must be one label (the vault name) under one of `allowed_suffixes`,
    on port 443, with no user, path, query or fragment, and never an IP literal.
    `allow_loopback_port` is for tests only and never comes from a customer: it
    admits exactly ``https://127.0.0.1:<that port>`` (the test server) and
    nothing else on loopback.
    """
    if not isinstance(value, str):
        raise _url_error(f"the vault URL must be text, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise _url_error(f"enter the vault URL, like {_URL_EXAMPLE}")
    if len(text) > 300:
        raise _url_error("the vault URL is too long: a Key Vault URL is https://<name><suffix>")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in text):
        raise _url_error(
            "the vault URL must not contain spaces or non-ASCII characters: copy the Vault URI "
            "from the vault's Overview page in the Azure portal"
        )
    if "\\" in text:
        raise _url_error("the vault URL must not contain backslashes")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise _url_error(f"the vault URL must start with https://, like {_URL_EXAMPLE}")
    if scheme.lower() != "https":
        raise _url_error(f"the vault URL must use https://, not {scheme.lower()}://")
    match = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL)
    netloc, tail = (match.group(1), match.group(2)) if match else (rest, "")
    if "?" in tail:
        raise _url_error("the vault URL must not have a query (remove everything from '?')")
    if "#" in tail:
        raise _url_error("the vault URL must not have a fragment (remove everything from '#')")
    if tail not in ("", "/"):
        raise _url_error(
            f"the vault URL must not have a path ({_show(tail)}): use only {_URL_EXAMPLE}"
        )
    if "@" in netloc:
        raise _url_error("the vault URL must not contain a user name or password ('@')")
    if netloc.startswith("[") or netloc.count(":") > 1:
        raise _url_error("the vault URL must name the vault's host, not an IPv6 address")
    host, colon, port = netloc.partition(":")
    host = host.lower()
    if not host:
        raise _url_error(f"the vault URL has no host name; expected {_URL_EXAMPLE}")
    if colon and not port:
        raise _url_error("the vault URL has ':' but no port: remove the ':'")
    if (
        allow_loopback_port is not None
        and host == "127.0.0.1"
        and colon
        and port == str(allow_loopback_port)
    ):
        return f"https://127.0.0.1:{allow_loopback_port}"
    labels = host.split(".")
    is_ip = False
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = bool(labels[-1]) and _NUMERIC_LABEL_RE.fullmatch(labels[-1]) is not None
    if is_ip:
        raise _url_error(
            f"the vault URL must name the vault's host, not an IP address ({_show(host)})"
        )
    if colon and port != "443":
        raise _url_error(
            f"the vault URL must not name port {_show(port)}: Key Vault answers on 443 only; "
            "remove the port"
        )
    if host.endswith("."):
        raise _url_error("the vault URL's host must not end with a dot")
    if len(host) > 253:
        raise _url_error("the vault URL's host name is too long (more than 253 characters)")
    if any(not label for label in labels):
        raise _url_error("the vault URL's host has an empty label (two dots in a row?)")
    for label in labels:
        if len(label) > 63:
            raise _url_error(
                f"the vault URL's host has a label longer than 63 characters: {_show(label)}"
            )
        if not _LABEL_RE.fullmatch(label):
            raise _url_error(
                f"the vault URL's host may only contain letters, digits, dots and hyphens "
                f"(not at the start or end of a label): {_show(host)}"
            )
    suffixes = _normal_suffixes(allowed_suffixes)
    matched = next((s for s in suffixes if host.endswith(s) and len(host) > len(s)), None)
    if matched is None:
        raise _url_error(
            f"{_show(host)} is not an Azure Key Vault host: the vault URL must end with "
            f"{' or '.join(suffixes) or '(no suffix is allowed)'}"
        )
    name = host[: -len(matched)]
    if "." in name:
        raise _url_error(
            f"the vault URL must be https://<vault-name>{matched}, with no further "
            f"sub-domain ({_show(name)})"
        )
    if not _VAULT_NAME_RE.fullmatch(name) or "--" in name:
        raise _url_error(
            f"vault name {_show(name)} is not valid: 3 to 24 letters, digits and single "
            "hyphens, starting with a letter and ending with a letter or digit"
        )
    return f"https://{host}"


def validate_key_name(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidAzureConfig("enter the key's name", field="key_name")
    value = value.strip()
    if not _KEY_NAME_RE.fullmatch(value):
        raise InvalidAzureConfig(
            f"key name {_show(value)} is not valid: 1 to 127 letters, digits and dashes "
            "(the name under Keys in the vault, not its identifier URL)",
            field="key_name",
        )
    return value


def validate_key_version(value: str) -> str:
    if not isinstance(value, str) or not _VERSION_RE.fullmatch(value.strip()):
        raise InvalidAzureConfig(
            "a key version is the 32 hexadecimal characters at the end of the key identifier "
            "(leave it empty to use the key's current version)",
            field="key_version",
        )
    return value.strip().lower()


def _validate_guid(value: str, field_name: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidAzureConfig(f"enter the {what}", field=field_name)
    text = value.strip()
    if not _GUID_RE.fullmatch(text):
        hint = ""
        if "." in text:
            hint = " (a GUID, not a domain name)"
        # The value is not repeated: a secret pasted into the wrong field would
        # otherwise reach the page and the (permanent) audit trail.
        raise InvalidAzureConfig(
            f"this is not a {what}{hint}: copy it from the app registration's "
            "Overview page, like 72f988bf-86f1-41af-91ab-2d7cd011db47",
            field=field_name,
        )
    return text.lower()


def validate_tenant_id(value: str) -> str:
    return _validate_guid(value, "tenant_id", "Directory (tenant) ID")


def validate_client_id(value: str) -> str:
    return _validate_guid(value, "client_id", "Application (client) ID")


def validate_client_secret(value: str) -> str:
    """A client secret's Value as Entra shows it once; not its Secret ID."""
    if not isinstance(value, str) or not value:
        raise InvalidAzureConfig("enter the client secret", field="client_secret")
    if value != value.strip():
        raise InvalidAzureConfig(
            "the client secret starts or ends with a space: paste it again", field="client_secret"
        )
    if len(value) > 256 or any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise InvalidAzureConfig(
            "the client secret must be the Value shown when the secret was created "
            "(printable characters, no spaces)",
            field="client_secret",
        )
    if _GUID_RE.fullmatch(value):
        raise InvalidAzureConfig(
            "this looks like the secret's Secret ID: paste the secret's Value instead "
            "(Certificates & secrets, shown only once when the secret is created)",
            field="client_secret",
        )
    return value


def _cert_error(message: str) -> InvalidAzureConfig:
    return InvalidAzureConfig(message, field="client_certificate")


def _load_client_certificate(pem: bytes) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The first certificate of a PEM and its RSA private key; dates are not checked."""
    if isinstance(pem, str):
        pem = pem.encode("ascii", "replace")
    if not isinstance(pem, bytes | bytearray) or not pem.strip():
        raise _cert_error("upload a PEM file with the certificate and its private key")
    pem = bytes(pem)
    if len(pem) > _MAX_PEM:
        raise _cert_error("the certificate file is too large (more than 64 KiB)")
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise _cert_error(
            "no certificate found: the PEM file must contain -----BEGIN CERTIFICATE----- "
            "and the private key"
        )
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise _cert_error("the certificate in the PEM file could not be read") from None
    if b"ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem:
        raise _cert_error(
            "the private key is encrypted: export it without a password "
            "(for example openssl pkcs12 -in app.pfx -nodes -out app.pem)"
        )
    if b"PRIVATE KEY-----" not in pem:
        raise _cert_error(
            "no private key found: the PEM file must contain the certificate and its private key"
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise _cert_error("the private key in the PEM file could not be read") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _cert_error(
            "the private key must be an RSA key: Microsoft Entra ID signs client assertions "
            "with RSA certificates"
        )
    if key.key_size < _MIN_RSA_BITS:
        raise _cert_error(f"the RSA key has {key.key_size} bits: use 2048 bits or more")
    public = key.public_key().public_numbers()

    def matches(cert: x509.Certificate) -> bool:
        cert_key = cert.public_key()
        return isinstance(cert_key, rsa.RSAPublicKey) and cert_key.public_numbers() == public

    if not matches(certificates[0]):
        if any(matches(cert) for cert in certificates[1:]):
            raise _cert_error(
                "put the certificate that belongs to the private key first in the PEM file"
            )
        raise _cert_error("the private key does not belong to the certificate")
    return certificates[0], key


def _thumbprint(certificate: x509.Certificate) -> str:
    # Azure identifies certificate credentials by their SHA-1 thumbprint; nothing here relies
    # on SHA-1 for security.
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def validate_client_certificate(pem: bytes, *, now: datetime | None = None) -> str:
    """Check a PEM with a certificate and its unencrypted RSA key; return its SHA-1 thumbprint.

    The thumbprint is uppercase hex, as the Azure portal shows it under Certificates & secrets.
    """
    certificate, _ = _load_client_certificate(pem)
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment < certificate.not_valid_before_utc:
        raise _cert_error(
            "the certificate is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if moment > certificate.not_valid_after_utc:
        raise _cert_error(
            f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}: create a new "
            "one, upload it to the app registration (Certificates & secrets) and here"
        )
    return _thumbprint(certificate)


@dataclass(frozen=True)
class AzureKeyVaultConfig:
    """What the customer configures (secrets apart): validated on construction."""

    vault_url: str
    key_name: str
    tenant_id: str
    client_id: str
    key_version: str | None = None  # pinned version for new wraps; None: the current version
    allowed_suffixes: tuple[str, ...] = field(default=DEFAULT_VAULT_SUFFIXES, repr=False)
    # Tests only (never from a customer): admit https://127.0.0.1:<port>, the test server.
    allow_loopback_port: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = validate_vault_url(
            self.vault_url,
            allowed_suffixes=self.allowed_suffixes,
            allow_loopback_port=self.allow_loopback_port,
        )
        object.__setattr__(self, "vault_url", url)
        object.__setattr__(self, "key_name", validate_key_name(self.key_name))
        object.__setattr__(self, "tenant_id", validate_tenant_id(self.tenant_id))
        object.__setattr__(self, "client_id", validate_client_id(self.client_id))
        if self.key_version is not None:
            object.__setattr__(self, "key_version", validate_key_version(self.key_version))

    @property
    def host(self) -> str:
        return self.vault_url.removeprefix("https://").split(":", 1)[0]

    @property
    def vault_name(self) -> str:
        return self.host.split(".", 1)[0]


@dataclass(frozen=True)
class AzureCredentials:
    """The app registration's secret: a client secret or a client certificate, exactly one."""

    client_secret: str | None = field(default=None, repr=False)
    client_certificate_pem: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.client_secret is None) == (self.client_certificate_pem is None):
            raise InvalidAzureConfig(
                "give either a client secret or a client certificate (exactly one)",
                field="client_secret" if self.client_secret is not None else "client_certificate",
            )
        if self.client_secret is not None:
            validate_client_secret(self.client_secret)
        else:
            # Structure only: an expired certificate must still build a provider, whose
            # checks then say that Entra refuses it.
            _load_client_certificate(self.client_certificate_pem or b"")

    @property
    def credential_type(self) -> str:
        return "client secret" if self.client_secret is not None else "client certificate"

    @property
    def thumbprint(self) -> str | None:
        if self.client_certificate_pem is None:
            return None
        return _thumbprint(_load_client_certificate(self.client_certificate_pem)[0])


# -- retries ---------------------------------------------------------------------


class _BoundedRetryPolicy(RetryPolicy):
    """azure-core's retries, except that a long Retry-After is not waited for."""

    max_retry_after = 3.0

    def __init__(self, **kwargs: Any) -> None:
        self.max_retry_after = float(kwargs.pop("max_retry_after", self.max_retry_after))
        super().__init__(**kwargs)

    def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after is not None and retry_after > self.max_retry_after:
            return False
        return bool(super().is_retry(settings, response))


def _retry_settings(timeout: float) -> dict[str, Any]:
    return {
        "retry_total": 2,
        "retry_connect": 2,
        "retry_read": 1,
        "retry_status": 2,
        "retry_backoff_factor": 0.2,
        "retry_backoff_max": 1.0,
        # Stops starting new attempts once this much time went by.
        "timeout": max(2 * timeout, 1.0),
    }


# -- error mapping ---------------------------------------------------------------


def _tag(error: KeyProviderError, **info: Any) -> KeyProviderError:
    for name, value in info.items():
        setattr(error, f"azure_{name}", value)
    return error


def _info(error: BaseException, name: str) -> Any:
    return getattr(error, f"azure_{name}", None)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.removeprefix("Authentication failed: ").strip()


def _caused_by_transport(error: BaseException) -> bool:
    seen: BaseException | None = error
    depth = 0
    while seen is not None and depth < 10:
        if isinstance(seen, ServiceRequestError | ServiceResponseError | ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return False


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


def _context_bytes(context: Context) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("a wrap context maps text to text")
    return encode_context(context)


def _tag_for(dek: bytes, context_bytes: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(dek, _TAG_LABEL + context_bytes + ciphertext, hashlib.sha256).digest()


# -- the provider ----------------------------------------------------------------


class AzureKeyVaultProvider(KeyProvider):
    """An RSA key in the customer's Azure Key Vault that wraps and unwraps DEKs."""

    kind = "azure_keyvault"

    def __init__(
        self,
        config: AzureKeyVaultConfig,
        credentials: AzureCredentials,
        *,
        authority_host: str | None = None,
        connection_verify: str | bool = True,
        timeout: float = 10.0,
        credential: Any | None = None,
    ) -> None:
        if not isinstance(config, AzureKeyVaultConfig):
            raise TypeError("config must be an AzureKeyVaultConfig")
        if not isinstance(credentials, AzureCredentials):
            raise TypeError("credentials must be AzureCredentials")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.config = config
        self.credentials = credentials
        self.timeout = float(timeout)
        self.connection_verify = connection_verify
        suffix = next((s for s in _CLOUDS if config.host.endswith(s)), None)
        self._real_vault = suffix is not None
        self._scope, default_authority = _CLOUDS.get(suffix or "", _CLOUDS[".vault.azure.net"])
        self.authority_host = (authority_host or default_authority).rstrip("/")
        self._injected = credential
        self._lock = threading.Lock()
        self._credential_obj: Any | None = credential
        self._key_client: KeyClient | None = None
        self._crypto: dict[str, CryptographyClient] = {}
        self._bundles: dict[str, KeyVaultKey] = {}

    # -- clients -----------------------------------------------------------------
    def _transport_kwargs(self) -> dict[str, Any]:
        return {
            "connection_verify": self.connection_verify,
            "connection_timeout": self.timeout,
            "read_timeout": self.timeout,
        }

    def _credential(self) -> Any:
        with self._lock:
            if self._credential_obj is not None:
                return self._credential_obj
            host = self.authority_host.removeprefix("https://").split("/", 1)[0].lower()
            kwargs: dict[str, Any] = {
                **self._transport_kwargs(),
                **_retry_settings(self.timeout),
                "retry_policy_class": _BoundedRetryPolicy,
                "authority": self.authority_host,
                # Only an operator-set authority (a private or test cloud) skips the check
                # that the authority is one Microsoft knows.
                "disable_instance_discovery": host not in _WELL_KNOWN_AUTHORITIES,
            }
            config, creds = self.config, self.credentials
            try:
                if creds.client_secret is not None:
                    credential: Any = ClientSecretCredential(
                        config.tenant_id, config.client_id, creds.client_secret, **kwargs
                    )
                else:
                    credential = CertificateCredential(
                        config.tenant_id,
                        config.client_id,
                        certificate_data=creds.client_certificate_pem,
                        **kwargs,
                    )
            except ValueError as exc:
                raise _tag(
                    KeyAccessDenied(
                        f"the app credentials could not be used: {_first_line(str(exc))}"
                    ),
                    source="entra",
                ) from None
            self._credential_obj = credential
            return credential

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            **self._transport_kwargs(),
            "retry_policy": _BoundedRetryPolicy(**_retry_settings(self.timeout)),
            "verify_challenge_resource": self._real_vault,
        }

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

    # -- error mapping -----------------------------------------------------------
    def _call(self, operation: str, target: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except KeyProviderError:
            raise
        except ClientAuthenticationError as exc:
            response = exc.response
            url = str(getattr(getattr(response, "request", None), "url", "") or "")
            if response is not None and url.startswith(self.config.vault_url):
                raise self._http_error(exc, operation, target) from None
            raise self._credential_error(exc) from None
        except HttpResponseError as exc:
            raise self._http_error(exc, operation, target) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            what = (
                "timed out"
                if "timeout" in type(exc).__name__.lower() or ("timed out" in str(exc).lower())
                else "could not connect"
            )
            raise _tag(
                KeyUnavailable(
                    f"Key Vault at {self.config.vault_url} could not be reached ({operation} "
                    f"{what}); try again later"
                ),
                source="keyvault",
            ) from None
        except AzureError as exc:
            raise _tag(
                KeyUnavailable(
                    f"Key Vault {operation} on {target} failed ({type(exc).__name__}); "
                    "try again later"
                ),
                source="keyvault",
            ) from None

    def _credential_error(self, exc: ClientAuthenticationError) -> KeyProviderError:
        status = getattr(exc.response, "status_code", None)
        message = _first_line(str(exc.message or exc))
        if status is None:
            # MSAL reports a 5xx from the token endpoint as text only.
            http = re.search(r"HTTP Error: (\d{3})", message)
            status = int(http.group(1)) if http else None
        if (status is not None and (status == 429 or status >= 500)) or _caused_by_transport(exc):
            detail = f"answered {status}" if status else "could not be reached"
            return _tag(
                KeyUnavailable(
                    f"Microsoft Entra ID ({self.authority_host}) {detail} when asked for a token; "
                    "try again later"
                ),
                source="entra",
                status=status,
            )
        aadsts = re.search(r"AADSTS(\d+)", message)
        code = aadsts.group(1) if aadsts else ""
        other_tenant = re.search(r"acquire tokens for tenant ([0-9A-Za-z.-]+)", message)
        if other_tenant:
            return _tag(
                KeyAccessDenied(
                    f"the vault belongs to directory (tenant) {other_tenant.group(1)}, not "
                    f"{self.config.tenant_id}: enter the vault's Directory (tenant) ID"
                ),
                source="entra",
                code="other_tenant",
            )
        if code == "90002" or "Unable to get authority configuration" in message:
            return _tag(
                KeyAccessDenied(
                    f"Microsoft Entra ID does not know the directory (tenant) "
                    f"{self.config.tenant_id}: check the Directory (tenant) ID"
                ),
                source="entra",
                code="unknown_tenant",
            )
        if code or re.search(r"invalid_client|unauthorized_client|invalid_request", message):
            return _tag(
                KeyAccessDenied(f"Microsoft Entra ID refused the credential: {message}"),
                source="entra",
                code=code or "refused",
            )
        return _tag(
            KeyUnavailable(
                f"Microsoft Entra ID did not issue a token ({message}); try again later"
            ),
            source="entra",
        )

    def _http_error(self, exc: HttpResponseError, operation: str, target: str) -> KeyProviderError:
        status = exc.status_code or 0
        error = exc.error
        code = str(getattr(error, "code", "") or "")
        inner_map = getattr(error, "innererror", None) or {}
        inner = str(inner_map.get("code", "") if isinstance(inner_map, dict) else "")
        message = _first_line(str(getattr(error, "message", "") or exc.reason or ""))
        where = f"Key Vault {operation} on {target}"
        result: KeyProviderError
        if status == 401:
            result = KeyAccessDenied(f"{where}: Key Vault refused the token ({message})")
        elif status == 403:
            if inner in ("KeyDisabled", "KeyExpired", "KeyNotYetValid") or "disabled" in message:
                result = KeyAccessDenied(f"{where}: {message or 'the key is disabled'}")
            elif inner == "KeyOperationForbidden":
                result = KeyAccessDenied(
                    f"{where}: {message}; enable the Wrap Key and Unwrap Key operations on the key"
                )
            else:
                result = KeyAccessDenied(f"{where} was denied: {RBAC_ADVICE} ({message})")
        elif status == 404:
            result = KeyAccessDenied(
                f"{where}: not found (the key or version was deleted, or the key name or vault "
                "URL is wrong)"
            )
        elif status == 400:
            result = KeyMaterialInvalid(f"{where} refused the request: {message}")
        elif status == 429:
            result = KeyUnavailable(
                f"{where}: Key Vault is throttling requests (429); try again later"
            )
        else:
            result = KeyUnavailable(
                f"{where}: Key Vault answered an error ({status} {code}); try again later"
            )
        return _tag(result, source="keyvault", status=status, code=inner or code)

    # -- reads -------------------------------------------------------------------
    def _get_key(self, version: str | None) -> KeyVaultKey:
        name = self.config.key_name
        target = f"{name}/{version}" if version else name
        client = self._keys()
        key = self._call("get key", target, lambda: client.get_key(name, version=version))
        read = key.properties.version
        if not read or not _VERSION_RE.fullmatch(read):
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
        if not isinstance(dek, bytes | bytearray) or len(dek) != _DEK_SIZE:
            raise KeyMaterialInvalid(f"a DEK to wrap is {_DEK_SIZE} bytes")
        context_bytes = _context_bytes(context)
        key = self._get_key(self.config.key_version)
        version = str(key.properties.version)
        if not _is_rsa(key) or _rsa_bits(key) < _MIN_RSA_BITS:
            raise KeyMaterialInvalid(
                f"the key {self.config.key_name}/{version} is not an RSA key of 2048 bits or more"
            )
        problem = _usability_problem(key)
        if problem:
            raise _tag(KeyAccessDenied(problem), source="keyvault")
        try:
            local = CryptographyClient.from_jwk(key.key)
            ciphertext = bytes(local.wrap_key(_ALG, bytes(dek)).encrypted_key)
        except (ValueError, NotImplementedError) as exc:
            raise KeyMaterialInvalid(
                f"the key {self.config.key_name}/{version} cannot wrap: {exc}"
            ) from None
        if len(ciphertext) not in _RSA_SIZES:
            raise KeyMaterialInvalid("RSA-OAEP-256 gave an unexpected ciphertext size")
        tag = _tag_for(bytes(dek), context_bytes, ciphertext)
        return Wrapped(_BLOB_VERSION + ciphertext + tag, version)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
            raise KeyMaterialInvalid("not a Key Vault key version (32 hexadecimal characters)")
        if (
            not isinstance(wrapped, bytes | bytearray)
            or len(wrapped) - 1 - _TAG_SIZE not in _RSA_SIZES
            or bytes(wrapped[:1]) != _BLOB_VERSION
        ):
            raise KeyMaterialInvalid("not a DEK wrapped by an Azure Key Vault key")
        context_bytes = _context_bytes(context)
        blob = bytes(wrapped)
        ciphertext, tag = blob[1:-_TAG_SIZE], blob[-_TAG_SIZE:]
        version = version.lower()
        client = self._crypto_for(version)
        result = self._call(
            "unwrapKey",
            f"{self.config.key_name}/{version}",
            lambda: client.unwrap_key(_ALG, ciphertext),
        )
        dek = bytes(result.key)
        if len(dek) != _DEK_SIZE or not hmac.compare_digest(
            _tag_for(dek, context_bytes, ciphertext), tag
        ):
            raise KeyMaterialInvalid(
                "the wrapped DEK does not belong to this context, or it was altered"
            )
        return dek

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
            if _info(exc, "status") == 404:
                return KeyHealth(False, pinned or "", f"the key {self.config.key_name} was deleted")
            if _info(exc, "code") in ("KeyDisabled", "KeyExpired", "KeyNotYetValid"):
                return KeyHealth(False, pinned or "", str(exc))
            raise
        version = str(current.properties.version)
        target = current
        if pinned and pinned != version:
            try:
                target = self._get_key(pinned)
            except KeyAccessDenied as exc:
                if _info(exc, "status") == 404:
                    return KeyHealth(False, version, f"the pinned key version {pinned} was deleted")
                raise
        problem = _usability_problem(target)
        if problem is None and not (_is_rsa(target) and _rsa_bits(target) >= _MIN_RSA_BITS):
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
        code = _info(exc, "code")
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
        status = _info(exc, "status")
        target = self.config.key_name + (
            f" version {self.config.key_version}" if self.config.key_version else ""
        )
        if status == 404:
            return (
                f"Key not found: {self.config.vault_url} has no key {target}. Check the key name "
                "and the vault URL (a deleted key must be recovered in Azure first)."
            )
        if status == 403 and _info(exc, "code") not in ("KeyDisabled", "KeyExpired"):
            return f"Key Vault denied reading the key {target}: {RBAC_ADVICE}."
        if isinstance(exc, KeyUnavailable):
            return f"{exc}."
        if _info(exc, "code") == "other_tenant":
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
        if _is_rsa(key) and bits >= _MIN_RSA_BITS:
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
        probe = secrets.token_bytes(_DEK_SIZE)
        step = "wrap"
        try:
            wrapped = self.wrap(probe, context)
            step = "unwrap"
            ok = self.unwrap(wrapped.blob, context, wrapped.version) == probe
        except KeyProviderError as exc:
            status, code = _info(exc, "status"), _info(exc, "code")
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
