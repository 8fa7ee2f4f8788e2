"""Vendor support's lockbox pages, under /support/t/<slug>/."""

from __future__ import annotations

from django.urls import path

from console import lockbox

app_name = "lockbox"
urlpatterns = [
    path("access/request/", lockbox.access_request, name="request"),
    path("data/", lockbox.data, name="data"),
    path("data/objects/<uuid:object_id>/", lockbox.object_download, name="object"),
]
