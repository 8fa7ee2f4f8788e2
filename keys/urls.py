from __future__ import annotations

from django.urls import path

from keys.views import actions, addon, aws, azure, kmip, overview, rotation, sources, upload

app_name = "keys"
urlpatterns = [
    path("", overview.keys_page, name="overview"),
    path("rotate/", overview.rotate_dek, name="rotate_dek"),
    path("cache-ttl/", overview.set_cache_ttl, name="set_cache_ttl"),
    path("enable/progress/", overview.enable_progress, name="enable_progress"),
    path("aws/", aws.aws_source, name="aws"),
    path("aws/save-and-test/", aws.aws_save_and_test, name="aws_save_and_test"),
    path("azure/", azure.azure_source, name="azure"),
    path("azure/save-and-test/", azure.azure_save_and_test, name="azure_save_and_test"),
    path("kmip/", kmip.kmip_source, name="kmip"),
    path("kmip/save-and-test/", kmip.kmip_save_and_test, name="kmip_save_and_test"),
    path("sources/<uuid:source_id>/test/", sources.test_source, name="test_source"),
    path("sources/<uuid:source_id>/enable/", sources.enable_source, name="enable_source"),
    path("upload/", upload.upload_page, name="upload"),
    path("upload/parameters/", upload.download_import_parameters, name="import_parameters"),
    path("upload/key/", upload.upload_key, name="upload_key"),
    path("rotation/", rotation.rotation_review, name="rotation"),
    path("addon/request/", addon.request_addon, name="request_addon"),
    # Confirm, reject, revoke, restore, destroy, cancel, remove, rotate now, switch.
    *actions.urlpatterns,
]
