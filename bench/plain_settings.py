"""Settings of the ingest benchmark's baseline server: the product's, with the
records API writing without encryption. Refused in production mode."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from console.settings import *  # noqa: F403
from console.settings import PRODUCTION

if PRODUCTION:
    raise ImproperlyConfigured(
        "bench.plain_settings stores data unencrypted: benchmarks only, never in production"
    )

ROOT_URLCONF = "bench.plain_urls"
