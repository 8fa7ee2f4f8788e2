from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Tenant data API"
    default_auto_field = "django.db.models.BigAutoField"
