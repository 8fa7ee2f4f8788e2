"""Sudo mode: actions that change keys need a password entered in the last minutes.

Signing in counts as entering the password. The moment is kept in the session
(server-side), so it ends with the session. A tenant that requires a second
factor for key actions also needs the second factor passed in those minutes;
the second factor's pages (a higher layer) say so through the session and
register, at start-up, how to tell whether a person has a factor at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

SESSION_KEY = "keyward_sudo_at"
# When the second factor was last passed in this session (signing in, sudo).
SECOND_FACTOR_KEY = "keyward_second_factor_at"
P = ParamSpec("P")

FactorCheck = Callable[[Any], bool]
_has_factor: list[FactorCheck] = []


def second_factor_register(check: FactorCheck) -> None:
    """Tell sudo mode how to see whether a person has a second factor."""
    _has_factor[:] = [check]


def has_second_factor(user: Any) -> bool:
    return bool(_has_factor) and _has_factor[0](user)


def sudo_grant(request: HttpRequest, *, second_factor: bool = False) -> None:
    now = time.time()
    request.session[SESSION_KEY] = now
    if second_factor:
        request.session[SECOND_FACTOR_KEY] = now


def _recent(request: HttpRequest, key: str) -> bool:
    granted = request.session.get(key)
    if not isinstance(granted, int | float):
        return False
    return 0 <= time.time() - granted <= settings.KEYWARD_SUDO_SECONDS


def sudo_active(request: HttpRequest, *, second_factor: bool = False) -> bool:
    if not _recent(request, SESSION_KEY):
        return False
    return not second_factor or _recent(request, SECOND_FACTOR_KEY)


def second_factor_needed(request: HttpRequest) -> bool:
    """Whether the tenant this request acts in asks for the second factor in sudo mode.

    `with_tenant` runs first and leaves the access on the request.
    """
    access = getattr(request, "tenant_access", None)
    return bool(access is not None and access.tenant.require_second_factor)


def safe_next(request: HttpRequest, candidate: str | None, fallback: str) -> str:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return fallback


def sudo_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Send the person to re-enter their password before the view runs (and to
    pass their second factor, where the tenant asks for it).

    A POST cannot be replayed after the detour, so the person comes back to
    the page they acted from (the Referer, if it is ours) and acts again.
    """
    return _sudo(view, second_factor_needed)


def sudo_with_own_factor_required(
    view: Callable[..., HttpResponseBase],
) -> Callable[..., HttpResponseBase]:
    """Sudo mode for changing one's own second factors: whoever has a factor
    proves it too, so a stolen password cannot replace or remove it."""
    return _sudo(view, lambda request: has_second_factor(request.user))


def _sudo(
    view: Callable[..., HttpResponseBase], needs_factor: Callable[[HttpRequest], bool]
) -> Callable[..., HttpResponseBase]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        factor = needs_factor(request)
        if sudo_active(request, second_factor=factor):
            return view(request, *args, **kwargs)
        if request.method == "GET":
            back = request.get_full_path()
        else:
            referer = safe_next(request, request.META.get("HTTP_REFERER"), reverse("console:home"))
            parts = urlsplit(referer)
            back = parts.path + (f"?{parts.query}" if parts.query else "")
        query = {"next": back, **({"factor": "1"} if factor else {})}
        url = f"{reverse('console:sudo')}?{urlencode(query)}"
        if getattr(request, "htmx", False):
            response = HttpResponse(status=204)
            response["HX-Redirect"] = url
            return response
        return HttpResponseRedirect(url)

    return wrapper


@receiver(user_logged_in, dispatch_uid="sudo_on_login")
def _grant_on_login(sender: Any, request: HttpRequest | None, **_: Any) -> None:
    if request is not None and hasattr(request, "session"):
        sudo_grant(request)
