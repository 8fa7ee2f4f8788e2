"""The product's URLs, with the records API writing without encryption (bench.plainapi)."""

from __future__ import annotations

from bench import plainapi
from console import urls

urlpatterns = [*plainapi.urlpatterns, *urls.urlpatterns]
