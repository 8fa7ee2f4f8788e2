"""The console's URLs with the objects section mounted where the Data page includes it."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

urlpatterns: list[URLPattern | URLResolver] = [
    path("t/<slug:slug>/data/objects/", include("objects.console_urls")),
    path("", include("console.urls")),
]
