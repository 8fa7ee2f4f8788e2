from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

from api import views
from api.auth import by_method

app_name = "api"
urlpatterns: list[URLPattern | URLResolver] = [
    path("objects/", include("objects.api_urls")),
    path(
        "records",
        by_method(GET=views.record_list, POST=views.record_create),
        name="records",
    ),
    path("records/batch", views.record_create_batch, name="records_batch"),
    path(
        "records/<uuid:uid>",
        by_method(GET=views.record_detail, DELETE=views.record_remove),
        name="record",
    ),
    path("openapi.json", views.openapi_json, name="openapi"),
]
