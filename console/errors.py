"""Error pages: the console's layout for people, the API's error model for machines.

The URLconf names these as `handler403/404/500`. Django calls them with
DEBUG off (in tests and in production) for any request, including paths that
match no URL at all, so they work from the path alone:

- a 403 or 404 is a page of the console, with a link back to the tenant's
  overview when the path names a tenant the user may see (else home);
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

from tenants.models import Tenant
from tenants.permissions import tenant_for_request

_TENANT_PATH = re.compile(r"^/t/(?P<slug>[-\w]+)(?:/|$)")


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


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _page(request, "console/403.html", 403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _page(request, "console/404.html", 404)


def server_error(request: HttpRequest) -> HttpResponse:
    return HttpResponse(loader.render_to_string("console/500.html"), status=500)
