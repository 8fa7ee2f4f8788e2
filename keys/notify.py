"""Emails to a tenant's owners and key administrators when their key needs them."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from tenants.models import Membership, Role, Tenant


def key_admin_emails(tenant: Tenant) -> list[str]:
    return [
        email
        for email in Membership.objects.filter(
            tenant=tenant, role__in=[Role.OWNER, Role.KEY_ADMIN]
        ).values_list("user__email", flat=True)
        if email
    ]


def notify_key_admins(tenant: Tenant, subject: str, body: str) -> None:
    """Send after commit, so nothing is announced that then rolls back."""

    def send() -> None:
        recipients = key_admin_emails(tenant)
        if recipients:
            send_mail(
                subject=f"[Keyward] {tenant.name}: {subject}",
                message=body,
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=recipients,
                fail_silently=True,
            )

    transaction.on_commit(send)
