from __future__ import annotations

from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The receivers connect on import: signing in starts sudo mode, and
        # sign-ins are audited in every tenant of the person. Imported here,
        # not at the top: they use models, which exist once every app is loaded.
        from tenants import signals, sudo  # noqa: F401, PLC0415
