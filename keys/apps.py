from __future__ import annotations

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class KeysConfig(AppConfig):
    name = "keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from keys.moves import on_migration_finished
        from keys.providers.local import RootKeyFileError
        from keys.registry import root_key_file
        from objects.signals import migration_finished

        # A tenant's objects follow its key: when they have moved, the tenant
        # reaches the state its key move was heading for.
        migration_finished.connect(on_migration_finished, dispatch_uid="keys.moves")

        # Refuse to start with a corrupt or world-readable root key file,
        # rather than fail on the first request that needs a key.
        try:
            root_key_file()
        except RootKeyFileError as exc:
            raise ImproperlyConfigured(str(exc)) from None
