from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from api.auth import by_method
from objects import api_views

urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "<path:key>",
        by_method(
            PUT=api_views.object_upload,
            GET=api_views.object_download,
            HEAD=api_views.object_metadata,
            DELETE=api_views.object_remove,
        ),
        name="object",
    ),
]
