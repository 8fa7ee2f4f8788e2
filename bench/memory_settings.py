"""Settings of the memory benchmark's baseline (bench.memory_urls): the product's,
with a bare streaming object view beside it. Refused in production mode."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from console.settings import *  # noqa: F403
from console.settings import PRODUCTION

if PRODUCTION:
    raise ImproperlyConfigured(
        "bench.memory_settings serves a bare, unauthenticated object view: "
        "benchmarks only, never in production"
    )

ROOT_URLCONF = "bench.memory_urls"
