"""Bearer-token authentication and error handling for API views.

Usage, for a function view of the API::

    @api_endpoint("records:read", methods=("GET",))
    def record_detail(request: HttpRequest, uid: UUID) -> HttpResponse:
        ...  # request.api_token and request.tenant are set

What `api_endpoint(scope, *, methods)` does, in order:
1. A method not in `methods` -> 405 `method_not_allowed` (with `Allow`).
2. `Authorization: Bearer kw_<prefix>_<secret>` -> the token, else 401
   `unauthorized` (one message for missing, malformed, unknown, expired and
   revoked tokens: no oracle about which).
3. The token lacks `scope` -> 403 `forbidden`.
4. The tenant's key is revoked or destroyed -> 403 `key_revoked`; a write
   scope (`*:write`) while the tenant is paused -> 503 `paused` or
   `migrating` with `Retry-After`. Skipped for an endpoint made with
   `needs_key=False`, which reads nothing under the tenant's key (the audit
   trail, which matters most exactly when the key was revoked).
5. Runs the view with `request.api_token` and `request.tenant` set. Raised
   `ApiError`s are rendered; the envelope's and key stores' errors become
   `key_revoked` / `key_unavailable` / `paused`, `Http404` becomes `not_found`.
The view is CSRF-exempt (no cookies are involved) and never cached.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from api.errors import ApiError, render_error
from api.tokens import api_token_authenticate
from crypto.envelope import KeyRevoked
from keys.providers.base import KeyAccessDenied, KeyUnavailable
from tenants.models import MIGRATING_STATES, PAUSED_STATES, ServiceState, Tenant
from tenants.states import ServicePaused

View = Callable[..., HttpResponseBase]
UNAUTHORIZED = "Send a valid API token: Authorization: Bearer kw_<prefix>_<secret>."
UNREADABLE_STATES = frozenset({ServiceState.REVOKED, ServiceState.DESTROYED})


def retry_after() -> dict[str, str]:
    return {"Retry-After": str(settings.KEYWARD_API_RETRY_AFTER_SECONDS)}


def paused_error(state: str) -> ApiError:
    label = ServiceState(state).label if state in ServiceState.values else state
    if state in MIGRATING_STATES:
        return ApiError(
            503,
            "migrating",
            f"The tenant's data is moving ({label}); writes resume when it is done.",
            headers=retry_after(),
        )
    return ApiError(
        503, "paused", f"Writes are paused ({label}); retry later.", headers=retry_after()
    )


def key_revoked_error() -> ApiError:
    return ApiError(
        403, "key_revoked", "The tenant's key is revoked: its data cannot be read or written."
    )


def _bearer(request: HttpRequest) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return credentials.strip()


def _check_tenant(tenant: Tenant, scope: str) -> None:
    if tenant.state in UNREADABLE_STATES:
        raise key_revoked_error()
    if scope.endswith(":write") and tenant.state in PAUSED_STATES:
        raise paused_error(tenant.state)


def _current_state(tenant: Tenant) -> str:
    return str(Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk))


def api_endpoint(
    scope: str, *, methods: tuple[str, ...], needs_key: bool = True
) -> Callable[[View], View]:
    """Authenticate a bearer token with `scope` and render API errors (see the module)."""
    allowed = tuple(m.upper() for m in methods)

    def decorator(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method not in allowed:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"Use {', '.join(allowed)}.",
                        headers={"Allow": ", ".join(allowed)},
                    )
                token = api_token_authenticate(_bearer(request))
                if token is None:
                    raise ApiError(
                        401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
                    )
                if not token.has_scope(scope):
                    raise ApiError(403, "forbidden", f"This token lacks the scope {scope}.")
                if needs_key:
                    _check_tenant(token.tenant, scope)
                request.api_token = token  # type: ignore[attr-defined]
                request.tenant = token.tenant  # type: ignore[attr-defined]
                response = view(request, *args, **kwargs)
            except ApiError as exc:
                return render_error(exc)
            except ServicePaused:
                return render_error(paused_error(_current_state(request.tenant)))  # type: ignore[attr-defined]
            except (KeyRevoked, KeyAccessDenied):
                return render_error(key_revoked_error())
            except KeyUnavailable:
                return render_error(
                    ApiError(
                        503,
                        "key_unavailable",
                        "The tenant's key store cannot be reached; retry later.",
                        headers=retry_after(),
                    )
                )
            except Http404:
                return render_error(ApiError(404, "not_found", "Not found."))
            response.setdefault("Cache-Control", "no-store")
            return response

        return wrapper

    return decorator


def by_method(**views: View) -> View:
    """One URL, one view per method (each with its own scope): `by_method(GET=a, POST=b)`."""
    allowed = ", ".join(sorted(views))

    @csrf_exempt
    def dispatch(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        view = views.get(request.method or "")
        if view is None:
            return render_error(
                ApiError(405, "method_not_allowed", f"Use {allowed}.", headers={"Allow": allowed})
            )
        return view(request, *args, **kwargs)

    return dispatch


def no_content() -> HttpResponse:
    return HttpResponse(status=204)
