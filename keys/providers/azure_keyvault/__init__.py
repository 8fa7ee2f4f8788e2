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

Modules: `config` (the customer's settings and their validation), `errors` (SDK
and Entra failures onto base.py's errors), `transport` (credential, clients,
retries and timeouts), `wrapping` (the blob format and its HMAC tag), and
`provider` (`AzureKeyVaultProvider`).
"""

from __future__ import annotations

from keys.providers.azure_keyvault.config import (
    DEFAULT_VAULT_SUFFIXES,
    AzureCredentials,
    AzureKeyVaultConfig,
    InvalidAzureConfig,
    validate_client_certificate,
    validate_client_id,
    validate_client_secret,
    validate_key_name,
    validate_key_version,
    validate_tenant_id,
    validate_vault_url,
)
from keys.providers.azure_keyvault.errors import RBAC_ADVICE
from keys.providers.azure_keyvault.provider import (
    CHECK_CREDENTIAL,
    CHECK_ENABLED,
    CHECK_FOUND,
    CHECK_IN_DATE,
    CHECK_NAMES,
    CHECK_OPS,
    CHECK_ROUND_TRIP,
    CHECK_RSA,
    AzureKeyVaultProvider,
)

__all__ = [
    "CHECK_CREDENTIAL",
    "CHECK_ENABLED",
    "CHECK_FOUND",
    "CHECK_IN_DATE",
    "CHECK_NAMES",
    "CHECK_OPS",
    "CHECK_ROUND_TRIP",
    "CHECK_RSA",
    "DEFAULT_VAULT_SUFFIXES",
    "RBAC_ADVICE",
    "AzureCredentials",
    "AzureKeyVaultConfig",
    "AzureKeyVaultProvider",
    "InvalidAzureConfig",
    "validate_client_certificate",
    "validate_client_id",
    "validate_client_secret",
    "validate_key_name",
    "validate_key_version",
    "validate_tenant_id",
    "validate_vault_url",
]
