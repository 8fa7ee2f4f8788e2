from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers Keyward's system checks, and the task log and metrics with
        # Celery's signals (both need the apps loaded).
        from console import checks, tasklog  # noqa: F401, PLC0415

        # Sudo mode (tenants, a lower layer) learns who has a second factor.
        from console.mfa.services import has_factor  # noqa: PLC0415
        from tenants.sudo import second_factor_register  # noqa: PLC0415

        second_factor_register(has_factor)

        # The root key rotation moves TOTP seeds too, and keeps a version they need.
        from console.mfa.services import totp_seeds_reseal, totp_seeds_under  # noqa: PLC0415
        from keys.services.rootkeys import (  # noqa: PLC0415
            SealedElsewhere,
            sealed_elsewhere_register,
        )

        sealed_elsewhere_register(
            SealedElsewhere("second-factor seeds", totp_seeds_reseal, totp_seeds_under)
        )
