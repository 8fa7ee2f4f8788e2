"""The console's URLs, the error handlers included, and views that fail, for the 500 tests."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

from console.urls import handler400, handler403, handler404, handler500
from tests.console.test_errors import boom

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]

urlpatterns: list[URLPattern | URLResolver] = [
    path("boom/", boom),
    path("api/v1/boom", boom),
    path("", include("console.urls")),
]
