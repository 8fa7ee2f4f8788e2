"""The Azure SDK's clients: the Entra credential, bounded retries and timeouts.

Which Entra authority and token scope serve each Key Vault cloud, and the
keyword arguments every credential and client is built with.
"""

from __future__ import annotations

from typing import Any

from azure.core.pipeline.policies import RetryPolicy
from azure.identity import CertificateCredential, ClientSecretCredential

from keys.providers.azure_keyvault.config import AzureCredentials, AzureKeyVaultConfig
from keys.providers.azure_keyvault.errors import first_line, tag_error
from keys.providers.base import KeyAccessDenied

# Token scope and Entra authority per Key Vault suffix (a sovereign cloud signs in at its own host).
CLOUDS: dict[str, tuple[str, str]] = {
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


def _transport_kwargs(connection_verify: str | bool, timeout: float) -> dict[str, Any]:
    return {
        "connection_verify": connection_verify,
        "connection_timeout": timeout,
        "read_timeout": timeout,
    }


def make_credential(
    config: AzureKeyVaultConfig,
    credentials: AzureCredentials,
    *,
    authority_host: str,
    connection_verify: str | bool,
    timeout: float,
) -> Any:
    """The app registration's Entra credential, from its client secret or certificate."""
    host = authority_host.removeprefix("https://").split("/", 1)[0].lower()
    kwargs: dict[str, Any] = {
        **_transport_kwargs(connection_verify, timeout),
        **_retry_settings(timeout),
        "retry_policy_class": _BoundedRetryPolicy,
        "authority": authority_host,
        # Only an operator-set authority (a private or test cloud) skips the check
        # that the authority is one Microsoft knows.
        "disable_instance_discovery": host not in _WELL_KNOWN_AUTHORITIES,
    }
    try:
        if credentials.client_secret is not None:
            credential: Any = ClientSecretCredential(
                config.tenant_id, config.client_id, credentials.client_secret, **kwargs
            )
        else:
            credential = CertificateCredential(
                config.tenant_id,
                config.client_id,
                certificate_data=credentials.client_certificate_pem,
                **kwargs,
            )
    except ValueError as exc:
        raise tag_error(
            KeyAccessDenied(f"the app credentials could not be used: {first_line(str(exc))}"),
            source="entra",
        ) from None
    return credential


def client_kwargs(
    *, connection_verify: str | bool, timeout: float, verify_challenge_resource: bool
) -> dict[str, Any]:
    """What a KeyClient or CryptographyClient is built with, the credential apart."""
    return {
        **_transport_kwargs(connection_verify, timeout),
        "retry_policy": _BoundedRetryPolicy(**_retry_settings(timeout)),
        "verify_challenge_resource": verify_challenge_resource,
    }
