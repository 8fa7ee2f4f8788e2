"""Sudo mode: actions that change keys need a password entered in the last minutes.

Signing in counts as entering the password. The moment is kept in the session
(server-side), so it ends with the session.
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
P = ParamSpec("P")


def sudo_grant(request: HttpRequest) -> None:
    request.session[SESSION_KEY] = time.time()


def sudo_active(request: HttpRequest) -> bool:
    granted = request.session.get(SESSION_KEY)
    if not isinstance(granted, int | float):
        return False
    return 0 <= time.time() - granted <= settings.KEYWARD_SUDO_SECONDS


def safe_next(request: HttpRequest, candidate: str | None, fallback: str) -> str:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return fallback


def sudo_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Send the person to re-enter their password before the view runs.

    A POST cannot be replayed after the detour, so the person comes back to
    the page they acted from (the Referer, if it is ours) and acts again.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if sudo_active(request):
            return view(request, *args, **kwargs)
        if request.method == "GET":
            back = request.get_full_path()
        else:
            referer = safe_next(request, request.META.get("HTTP_REFERER"), reverse("console:home"))
            parts = urlsplit(referer)
            back = parts.path + (f"?{parts.query}" if parts.query else "")
        url = f"{reverse('console:sudo')}?{urlencode({'next': back})}"
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
