from __future__ import annotations

from django.urls import path

from console import data_views as console_views

app_name = "data"
urlpatterns = [
    path("", console_views.data_page, name="overview"),
    path("tokens/", console_views.token_create, name="token_create"),
    path("tokens/<uuid:token_id>/revoke/", console_views.token_revoke, name="token_revoke"),
    path("lookup-key/rotate/", console_views.lookup_key_rotate, name="lookup_key_rotate"),
]
