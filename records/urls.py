"""Console URLs of the records app, included at /t/<slug>/keys/reencrypt/."""

from __future__ import annotations

from django.urls import path

from records import views

app_name = "records"
urlpatterns = [
    path("", views.start_reencryption, name="reencrypt"),
    path("progress/", views.reencryption_progress, name="reencrypt_progress"),
]
