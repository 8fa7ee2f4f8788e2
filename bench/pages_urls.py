"""The pages benchmark's baseline: a bare signed-in Django page beside the product's URLs.

The view does what any console page does at the least (the session, the
signed-in user, one indexed query for the tenant by its slug, a template) and
nothing of Keyward's: what `bench_pages.py` measures the console's pages
against, through the same client, middleware and database. Used only by the
benchmark (it swaps ROOT_URLCONF in its own process), never by the product.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.template import engines
from django.urls import path

from console import urls
from tenants.models import Tenant

_TEMPLATE = engines["django"].from_string(
    "<!doctype html><html><head><title>{{ tenant.name }}</title></head>"
    "<body><h1>{{ tenant.name }}</h1><p>{{ tenant.slug }}: {{ tenant.state }}</p></body></html>"
)


@login_required
def bare_page(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise Http404
    return HttpResponse(_TEMPLATE.render({"tenant": tenant}, request))


urlpatterns: list[Any] = [
    path("bench/bare/<slug:slug>/", bare_page, name="bench_bare_page"),
    *urls.urlpatterns,
]
