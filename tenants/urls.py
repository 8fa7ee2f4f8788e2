from __future__ import annotations

from django.urls import path

from tenants import views

app_name = "tenants"
urlpatterns = [
    path("", views.member_list, name="members"),
    path("<uuid:membership_id>/role/", views.member_change_role, name="change_role"),
    path("<uuid:membership_id>/remove/", views.member_remove, name="remove"),
]
