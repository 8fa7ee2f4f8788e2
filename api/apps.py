from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Tenant data API"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from api.indexkeys import index_keys_move, index_keys_shred, index_new_records
        from archive.services import records_hook_register
        from keys.services import wrapped_key_mover_register, wrapped_key_shredder_register

        records_hook_register(index_new_records)
        wrapped_key_mover_register(index_keys_move)
        wrapped_key_shredder_register(index_keys_shred)
