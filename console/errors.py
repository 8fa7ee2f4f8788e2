"""Error pages: the console's layout for people, the API's error model for machines.

The URLconf names these as `handler400/403/404/500`. Django calls them with
DEBUG off (in tests and in production) for any request, including paths that
match no URL at all, so they work from the path alone:

- under `/api/v1/` the answer is the API's JSON error body (`api.errors`),
  whatever the method, so a client never has to parse an HTML page;
- elsewhere a 403 or 404 is a page of the console, with a link back to the
  tenant's overview when the path names a tenant the user may see (else home);
- a 500 page extends nothing and uses no context: whatever failed (the
  database, a template) must not fail the error page too.
"""

from __future__ import annotations

import re

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template import loader
from django.urls import reverse
from django.views import defaults

from api.errors import ApiError, render_error
from tenants.models import Tenant
from tenants.permissions import tenant_for_request

# Where console/urls.py mounts the API.
API_ROOT = "/api/v1/"
_TENANT_PATH = re.compile(r"^/t/(?P<slug>[-\w]+)(?:/|$)")

_API_ERRORS: dict[int, ApiError] = {
    400: ApiError(400, "bad_request", "The request could not be understood."),
    403: ApiError(403, "forbidden", "This request is not allowed."),
    404: ApiError(404, "not_found", "No such endpoint or resource."),
    500: ApiError(500, "server_error", "Keyward failed to answer; retry later."),
}


def is_api_path(path: str) -> bool:
    return path.startswith(API_ROOT) or path == API_ROOT.rstrip("/")


def visible_tenant(request: HttpRequest) -> Tenant | None:
    """The tenant the path names (`/t/<slug>/...`), if this user may see it.

    Like any page of that tenant, the error page then shows the tenant's
    tabs and state banner (`tenant_for_request` remembers it for the shell).
    """
    access = getattr(request, "tenant_access", None)
    if access is not None:
        return access.tenant
    match = _TENANT_PATH.match(request.path_info)
    if match is None or not hasattr(request, "user"):
        return None
    try:
        return tenant_for_request(request, match["slug"]).tenant
    except (Http404, PermissionDenied):
        return None


def _page(request: HttpRequest, template: str, status: int) -> HttpResponse:
    if is_api_path(request.path_info):
        return render_error(_API_ERRORS[status])
    tenant = visible_tenant(request)
    if tenant is not None:
        back_url, back_label = (
            reverse("console:dashboard", args=[tenant.slug]),
            f"Back to {tenant.name}'s overview",
        )
    else:
        back_url, back_label = reverse("console:home"), "Back to the console home"
    context = {"error_tenant": tenant, "back_url": back_url, "back_label": back_label}
    return render(request, template, context, status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path_info):
        return render_error(_API_ERRORS[400])
    # Django's own 400 page: the request may be too broken for the console's shell.
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _page(request, "console/403.html", 403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _page(request, "console/404.html", 404)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path_info):
        return render_error(_API_ERRORS[500])
    return HttpResponse(loader.render_to_string("console/500.html"), status=500)
