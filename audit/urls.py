from __future__ import annotations

from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.audit_list, name="list"),
    path("export.csv", views.audit_export_csv, name="export_csv"),
    path("export.jsonl", views.audit_export_jsonl, name="export_jsonl"),
    path("streaming/", views.audit_stream, name="stream"),
    path("streaming/save", views.audit_stream_save, name="stream_save"),
    path("streaming/resume", views.audit_stream_resume, name="stream_resume"),
    path("streaming/remove", views.audit_stream_remove, name="stream_remove"),
]
