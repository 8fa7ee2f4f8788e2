"""Azure SDK and Entra failures onto base.py's errors, keeping Azure's own first line.

Each error is tagged with where it came from (`source`: "entra" or "keyvault"),
and Key Vault's HTTP status and error code, for the checks to advise on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyProviderError,
    KeyUnavailable,
)

RBAC_ADVICE = (
    "grant the application the Key Vault Crypto Service Encryption User role (RBAC) "
    "or an access policy with Get, Wrap Key, Unwrap Key"
)

T = TypeVar("T")


def tag_error(error: KeyProviderError, **info: Any) -> KeyProviderError:
    for name, value in info.items():
        setattr(error, f"azure_{name}", value)
    return error


def error_info(error: BaseException, name: str) -> Any:
    return getattr(error, f"azure_{name}", None)


def first_line(text: str) -> str:
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


def mapped_call(
    operation: str,
    target: str,
    fn: Callable[[], T],
    *,
    vault_url: str,
    authority_host: str,
    tenant_id: str,
) -> T:
    """Run one SDK call (`operation` on `target`), its errors mapped onto base.py's."""
    try:
        return fn()
    except KeyProviderError:
        raise
    except ClientAuthenticationError as exc:
        response = exc.response
        url = str(getattr(getattr(response, "request", None), "url", "") or "")
        if response is not None and url.startswith(vault_url):
            raise _http_error(exc, operation, target) from None
        raise _credential_error(exc, authority_host=authority_host, tenant_id=tenant_id) from None
    except HttpResponseError as exc:
        raise _http_error(exc, operation, target) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        what = (
            "timed out"
            if "timeout" in type(exc).__name__.lower() or ("timed out" in str(exc).lower())
            else "could not connect"
        )
        raise tag_error(
            KeyUnavailable(
                f"Key Vault at {vault_url} could not be reached ({operation} "
                f"{what}); try again later"
            ),
            source="keyvault",
        ) from None
    except AzureError as exc:
        raise tag_error(
            KeyUnavailable(
                f"Key Vault {operation} on {target} failed ({type(exc).__name__}); try again later"
            ),
            source="keyvault",
        ) from None


def _credential_error(
    exc: ClientAuthenticationError, *, authority_host: str, tenant_id: str
) -> KeyProviderError:
    status = getattr(exc.response, "status_code", None)
    message = first_line(str(exc.message or exc))
    if status is None:
        # MSAL reports a 5xx from the token endpoint as text only.
        http = re.search(r"HTTP Error: (\d{3})", message)
        status = int(http.group(1)) if http else None
    if (status is not None and (status == 429 or status >= 500)) or _caused_by_transport(exc):
        detail = f"answered {status}" if status else "could not be reached"
        return tag_error(
            KeyUnavailable(
                f"Microsoft Entra ID ({authority_host}) {detail} when asked for a token; "
                "try again later"
            ),
            source="entra",
            status=status,
        )
    aadsts = re.search(r"AADSTS(\d+)", message)
    code = aadsts.group(1) if aadsts else ""
    other_tenant = re.search(r"acquire tokens for tenant ([0-9A-Za-z.-]+)", message)
    if other_tenant:
        return tag_error(
            KeyAccessDenied(
                f"the vault belongs to directory (tenant) {other_tenant.group(1)}, not "
                f"{tenant_id}: enter the vault's Directory (tenant) ID"
            ),
            source="entra",
            code="other_tenant",
        )
    if code == "90002" or "Unable to get authority configuration" in message:
        return tag_error(
            KeyAccessDenied(
                f"Microsoft Entra ID does not know the directory (tenant) "
                f"{tenant_id}: check the Directory (tenant) ID"
            ),
            source="entra",
            code="unknown_tenant",
        )
    if code or re.search(r"invalid_client|unauthorized_client|invalid_request", message):
        return tag_error(
            KeyAccessDenied(f"Microsoft Entra ID refused the credential: {message}"),
            source="entra",
            code=code or "refused",
        )
    return tag_error(
        KeyUnavailable(f"Microsoft Entra ID did not issue a token ({message}); try again later"),
        source="entra",
    )


def _http_error(exc: HttpResponseError, operation: str, target: str) -> KeyProviderError:
    status = exc.status_code or 0
    error = exc.error
    code = str(getattr(error, "code", "") or "")
    inner_map = getattr(error, "innererror", None) or {}
    inner = str(inner_map.get("code", "") if isinstance(inner_map, dict) else "")
    message = first_line(str(getattr(error, "message", "") or exc.reason or ""))
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
        result = KeyUnavailable(f"{where}: Key Vault is throttling requests (429); try again later")
    else:
        result = KeyUnavailable(
            f"{where}: Key Vault answered an error ({status} {code}); try again later"
        )
    return tag_error(result, source="keyvault", status=status, code=inner or code)
