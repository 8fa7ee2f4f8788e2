"""The one refusal of keys: the message is what the user sees."""

from __future__ import annotations

from typing import Any


class KeyActionRefused(Exception):
    """A key action the tenant's state, its key store or what was entered does not allow.

    The message says why and what to do. `field` names the form field at fault
    when the refusal is about one (a registration's host or certificate), so the
    page can show it beside that field. `details` go with the refusal into the
    audit event the view records (which checks failed).
    """

    def __init__(
        self, message: str, *, field: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.details = details or {}
