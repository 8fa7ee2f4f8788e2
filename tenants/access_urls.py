"""The tenant's Access page: vendor support's requests, grants and the owners' settings."""

from __future__ import annotations

from django.urls import path

from tenants import access_views

app_name = "access"
urlpatterns = [
    path("", access_views.access_page, name="page"),
    path("settings/", access_views.access_settings, name="settings"),
    path("<uuid:request_id>/approve/", access_views.access_approve, name="approve"),
    path("<uuid:request_id>/deny/", access_views.access_deny, name="deny"),
    path("<uuid:request_id>/end/", access_views.access_end, name="end"),
]
