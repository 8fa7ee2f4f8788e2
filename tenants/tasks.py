"""Tenants' background work: closing vendor support access that ran out."""

from __future__ import annotations

from celery import shared_task

from tenants.access import access_expire_due


@shared_task(name="tenants.expire_support_access")
def expire_support_access() -> int:
    """Beat: requests nobody answered in time expire, grants past their window close."""
    return access_expire_due()
