from __future__ import annotations

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class KeysConfig(AppConfig):
    name = "keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: these modules use models, which exist
        # only once every app is loaded.
        from keys.providers.local import RootKeyFileError
        from keys.registry import root_key_file
        from keys.runtime import on_tenant_transition
        from keys.services import keys_bootstrap_tenant
        from tenants.services import tenant_created_register
        from tenants.states import on_transition

        # Every change of a tenant's state reaches every process's key cache.
        on_transition(on_tenant_transition)
        # A new tenant gets its key source and first data key with its row.
        tenant_created_register(
            lambda tenant, actor: keys_bootstrap_tenant(tenant=tenant, actor=actor)
        )

        # Refuse to start with a corrupt or world-readable root key file,
        # rather than fail on the first request that needs a key.
        try:
            root_key_file()
        except RootKeyFileError as exc:
            raise ImproperlyConfigured(str(exc)) from None
