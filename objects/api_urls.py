from __future__ import annotations

from django.urls import URLPattern, URLResolver, path, register_converter

from api.auth import by_method
from objects import api_views


class ObjectKeyConverter:
    """Any key at all, line breaks included: the view, not the URL, says what is valid.

    Django's `path` converter stops at a line break, so a key with one was a 404
    (no such endpoint) instead of the documented 400 naming the rule it breaks.
    """

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ObjectKeyConverter, "objectkey")

urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "<objectkey:key>",
        by_method(
            PUT=api_views.object_upload,
            GET=api_views.object_download,
            HEAD=api_views.object_metadata,
            DELETE=api_views.object_remove,
        ),
        name="object",
    ),
]
