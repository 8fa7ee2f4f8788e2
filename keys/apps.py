from __future__ import annotations

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class KeysConfig(AppConfig):
    name = "keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: these modules use models, which exist
        # only once every app is loaded.
        from keys.providers.local import RootKeyFileError  # noqa: PLC0415
        from keys.rootkey import root_key_file  # noqa: PLC0415
        from keys.runtime import on_tenant_transition  # noqa: PLC0415
        from keys.services.deks import keys_bootstrap_tenant  # noqa: PLC0415
        from tenants.services import tenant_created_register  # noqa: PLC0415
        from tenants.states import on_transition  # noqa: PLC0415

        on_transition(on_tenant_transition)
        _register_stream_hooks()
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


def _register_stream_hooks() -> None:
    """Audit streaming seals its webhook secrets with the vault and checks its
    destinations like a KMIP server: audit sits below keys, so keys hands them down."""
    from audit.streaming.hooks import Hooks, register  # noqa: PLC0415
    from keys.providers.kmip.config import checked_addresses  # noqa: PLC0415
    from keys.vault import packed, seal, unpacked, unseal  # noqa: PLC0415

    register(
        Hooks(
            seal=lambda purpose, owner, value: packed(
                seal(purpose=purpose, owner=owner, value=value)
            ),
            unseal=lambda purpose, owner, stored: unseal(
                purpose=purpose, owner=owner, sealed=unpacked(stored)
            ),
            check_address=lambda host, port, allowed: checked_addresses(
                host, port, allow_private=False, allowed_networks=allowed, what="a SIEM destination"
            ),
        )
    )
