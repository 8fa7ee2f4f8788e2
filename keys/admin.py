from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from keys.models import DataKey, KekVersion, KeySource


class ReadOnlyAdmin(admin.ModelAdmin):
    """Key records change only through audited services, never by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(KeySource)
class KeySourceAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "kind", "state", "created", "updated")
    list_filter = ("kind", "state")


@admin.register(KekVersion)
class KekVersionAdmin(ReadOnlyAdmin):
    list_display = ("source", "provider_version", "state", "created", "validated_at")
    list_filter = ("state",)


@admin.register(DataKey)
class DataKeyAdmin(ReadOnlyAdmin):
    # The wrapped bytes are not shown: metadata only.
    list_display = ("tenant", "version", "state", "kek_version", "encryption_count", "created")
    list_filter = ("state",)
    exclude = ("wrapped",)
