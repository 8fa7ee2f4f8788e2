"""The bare view first (bench.bareapi), then the product's URLs (for the readiness probe)."""

from __future__ import annotations

from bench import bareapi
from console import urls

urlpatterns = [*bareapi.urlpatterns, *urls.urlpatterns]
