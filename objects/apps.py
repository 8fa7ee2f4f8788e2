from __future__ import annotations

from django.apps import AppConfig


class ObjectsConfig(AppConfig):
    name = "objects"
    verbose_name = "Encrypted objects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from keys.services import wrapped_key_shredder_register
        from objects.services import object_checksums_shred

        wrapped_key_shredder_register(object_checksums_shred)
