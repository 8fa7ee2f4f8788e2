from __future__ import annotations

from django.apps import AppConfig


class ObjectsConfig(AppConfig):
    name = "objects"
    verbose_name = "Encrypted objects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: the consumer uses models, which exist
        # only once every app is loaded.
        from keys.consumers import consumer_register  # noqa: PLC0415
        from objects.consumer import OBJECTS  # noqa: PLC0415

        consumer_register(OBJECTS)
