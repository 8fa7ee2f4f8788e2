from __future__ import annotations

from django.urls import path

from keys import views

app_name = "keys"
urlpatterns = [
    path("", views.keys_page, name="overview"),
    path("rotate/", views.rotate_dek, name="rotate_dek"),
    path("cache-ttl/", views.set_cache_ttl, name="set_cache_ttl"),
    path("reencrypt/", views.start_reencryption, name="reencrypt"),
    path("reencrypt/progress/", views.reencryption_progress, name="reencrypt_progress"),
]
