from __future__ import annotations

from django.urls import path

from keys import views

app_name = "keys"
urlpatterns = [
    path("", views.keys_page, name="overview"),
    path("rotate/", views.rotate_dek, name="rotate_dek"),
    path("cache-ttl/", views.set_cache_ttl, name="set_cache_ttl"),
    path("aws/", views.aws_source, name="aws"),
    path("aws/save-and-test/", views.aws_save_and_test, name="aws_save_and_test"),
    path("azure/", views.azure_source, name="azure"),
    path("azure/save-and-test/", views.azure_save_and_test, name="azure_save_and_test"),
    path("kmip/", views.kmip_source, name="kmip"),
    path("kmip/save-and-test/", views.kmip_save_and_test, name="kmip_save_and_test"),
    path("sources/<uuid:source_id>/test/", views.test_source, name="test_source"),
    path("sources/<uuid:source_id>/enable/", views.enable_source, name="enable_source"),
    path("sources/<uuid:source_id>/switch/", views.switch_source, name="switch_source"),
    path("upload/", views.upload_page, name="upload"),
    path("upload/parameters/", views.download_import_parameters, name="import_parameters"),
    path("upload/key/", views.upload_key, name="upload_key"),
    path("enable/progress/", views.enable_progress, name="enable_progress"),
    path("rotation/", views.rotation_review, name="rotation"),
    path("rotation/confirm/", views.rotation_confirm, name="rotation_confirm"),
    path("rotation/reject/", views.rotation_reject, name="rotation_reject"),
    path("revoke/", views.revoke, name="revoke"),
    path("restore/", views.restore, name="restore"),
    path("destroy/", views.destroy, name="destroy"),
    path("destroy/cancel/", views.cancel_destroy, name="cancel_destroy"),
    path("remove/", views.remove_byok, name="remove_byok"),
    path("rotate-key/", views.rotate_kek, name="rotate_kek"),
]
