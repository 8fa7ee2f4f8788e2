"""What the customer configures for Azure Key Vault, validated before anything is saved.

The vault URL (the SSRF guard), key name and version, directory and application
ids, the client secret or certificate, and `InvalidAzureConfig`, which names the
form field to fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_VAULT_SUFFIXES: tuple[str, ...] = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.azure.net",
    ".managedhsm.azure.cn",
    ".managedhsm.usgovcloudapi.net",
)

MIN_RSA_BITS = 2048
_MAX_PEM = 64 * 1024


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
VERSION_RE = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
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
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value.strip()):
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
        # Parsed lazily by cryptography: a damaged public key surfaces on first use.
        for cert in certificates:
            cert.public_key()
    # A damaged version field raises InvalidVersion, which is not a ValueError.
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
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
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise _cert_error("the private key in the PEM file could not be read") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _cert_error(
            "the private key must be an RSA key: Microsoft Entra ID signs client assertions "
            "with RSA certificates"
        )
    if key.key_size < MIN_RSA_BITS:
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
