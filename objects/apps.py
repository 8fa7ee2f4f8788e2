from __future__ import annotations

from django.apps import AppConfig


class ObjectsConfig(AppConfig):
    name = "objects"
    verbose_name = "Encrypted objects"
    default_auto_field = "django.db.models.BigAutoField"
