"""Settings of the ingest benchmark's bare baseline (bench.bareapi): the product's,
with POST /api/v1/records answered by a plain view. Refused in production mode."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from console.settings import *  # noqa: F403
from console.settings import PRODUCTION

if PRODUCTION:
    raise ImproperlyConfigured(
        "bench.bare_settings stores data unencrypted: benchmarks only, never in production"
    )

ROOT_URLCONF = "bench.bare_urls"
