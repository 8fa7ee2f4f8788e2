from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

app_name = "api"
urlpatterns: list[URLPattern | URLResolver] = [
    path("objects/", include("objects.api_urls")),
]
