"""The records endpoints of /api/v1/ (named in the shell's `api` namespace)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from api.auth import by_method
from records import api_views

urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "records",
        by_method(GET=api_views.record_list, POST=api_views.record_create),
        name="records",
    ),
    path("records/batch", api_views.record_create_batch, name="records_batch"),
    path(
        "records/<uuid:uid>",
        by_method(GET=api_views.record_detail, DELETE=api_views.record_remove),
        name="record",
    ),
]
