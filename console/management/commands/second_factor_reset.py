"""Remove every second factor and recovery code of someone who lost them.

    python manage.py second_factor_reset alice@acme.example --reason "phone lost, ticket 4121"

For operators, once they have made sure who is asking (a call back, the
person's manager). The reset is recorded in the person's tenants' trails (the
vendor's for staff) with the reason; the person sets up a factor again at
their next sign-in (vendor staff must) or on their Second factor page.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import Actor
from console.mfa.services import factors_reset


class Command(BaseCommand):
    help = "Remove a person's second factors and recovery codes, so that they can enrol again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="The person's email (their user name).")
        parser.add_argument(
            "--reason", required=True, help="Why, for the audit trail (a ticket, a case)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        reason = str(options["reason"]).strip()
        if not reason:
            raise CommandError("--reason must say why (it goes into the audit trail).")
        user_model = get_user_model()
        email = str(options["email"]).strip()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: email}).first()
        if user is None:
            raise CommandError(f"No one signs in as {email!r}.")
        removed = factors_reset(
            user=user, actor=Actor.system("manage.py second_factor_reset"), reason=reason[:500]
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Removed {removed} second factor(s) and every recovery code of {email}; "
                "they set up a new factor at their next sign-in."
            )
        )
