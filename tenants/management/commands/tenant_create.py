"""Onboard a tenant from the command line: the first tenant of an installation, or any.

    python manage.py tenant_create --name "Acme Corp" --slug acme --owner alice@acme.example

The tenant is made by the service the console uses (its key source, first
data key and audit events come with it) and the owner gets an emailed,
single-use link to choose a password. Either everything is created or nothing.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import Actor
from tenants.services import tenant_onboard


class Command(BaseCommand):
    help = (
        "Create a tenant (vendor-managed key, first data key) and email its first owner "
        "an invitation to set a password."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="The tenant's display name.")
        parser.add_argument(
            "--slug",
            required=True,
            help="Short name in the tenant's URLs: letters, digits, hyphens, underscores.",
        )
        parser.add_argument("--owner", required=True, help="The first owner's email address.")
        parser.add_argument(
            "--site-url",
            default=settings.KEYWARD_SITE_URL,
            help="The console's address for the link in the email (default: KEYWARD_SITE_URL, "
            "%(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        site_url = str(options["site_url"])
        if not site_url.startswith(("http://", "https://")):
            raise CommandError(f"--site-url {site_url!r} must start with http:// or https://")
        try:
            tenant, invitation = tenant_onboard(
                name=str(options["name"]).strip(),
                slug=str(options["slug"]).strip(),
                owner_email=str(options["owner"]),
                actor=Actor.system("manage.py tenant_create"),
                site_url=site_url,
            )
        except ValidationError as exc:
            raise CommandError(_describe(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Created tenant {tenant.name} ({tenant.slug}). Invitation emailed to "
                f"{invitation.email} as owner; the link works until "
                f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC."
            )
        )


def _describe(exc: ValidationError) -> str:
    labels = {"slug": "--slug", "name": "--name", "email": "--owner"}
    if not hasattr(exc, "error_dict"):
        return " ".join(exc.messages)
    return " ".join(
        f"{labels.get(field, field)}: {' '.join(messages)}"
        for field, messages in exc.message_dict.items()
    )
