from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import Actor
from keys.errors import KeyActionRefused
from keys.services.rootkeys import root_key_dependents, root_key_retire


class Command(BaseCommand):
    help = (
        "Remove an old vendor root key version from the key file for good. Refused "
        "while anything still depends on it (run rewrap_data_keys first)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("version", help="the version to retire, e.g. root-1")
        parser.add_argument(
            "--check", action="store_true", help="only list what still depends on it"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        match = re.fullmatch(r"(?:root-)?([1-9][0-9]{0,8})", options["version"].strip())
        if match is None:
            raise CommandError(f"not a root key version: {options['version']!r} (e.g. root-1)")
        number = int(match.group(1))
        if options["check"]:
            dependents = root_key_dependents(number)
            for what, count in sorted(dependents.items()):
                self.stdout.write(f"{what}: {count}")
            self.stdout.write("Nothing depends on it." if not dependents else "Still in use.")
            return
        try:
            root_key_retire(number=number, actor=Actor.system("manage.py retire_root_key"))
        except KeyActionRefused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Root key version root-{number} is retired and gone from the key file.")
