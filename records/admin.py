from __future__ import annotations

from django.contrib import admin

from keys.admin import ReadOnlyAdmin
from records.models import ReencryptionJob


@admin.register(ReencryptionJob)
class ReencryptionJobAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "state", "done", "total", "created", "finished")
