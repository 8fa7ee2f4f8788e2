"""Console URLs of the objects section, included at /t/<slug>/data/objects/."""

from __future__ import annotations

from django.urls import path

from objects import views

app_name = "objects"
urlpatterns = [
    path("", views.data_section, name="section"),
    path("migration/retry/", views.migration_retry, name="migration_retry"),
]
