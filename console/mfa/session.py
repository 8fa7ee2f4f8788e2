"""What the session knows about the second factor.

A password that was right but not yet followed by the second factor leaves
only a pending sign-in in the session: the person is not signed in (no
`login()`), so no page, the admin included, treats them as anyone.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest

PENDING_KEY = "keyward_pending_sign_in"
# How the session was signed in: with the second factor, or with a password
# alone (people who have no factor and need none).
SIGNED_IN_KEY = "keyward_signed_in_with"
WITH_SECOND_FACTOR = "second_factor"
PASSWORD_ONLY = "password"  # noqa: S105 (how one signed in, not a password)
# The password step is good for this long; then it is asked again.
PENDING_SECONDS = 300


def pending_start(request: HttpRequest, user: Any, next_url: str) -> None:
    session = request.session
    session.cycle_key()
    session[PENDING_KEY] = {
        "user": str(user.pk),
        "backend": str(getattr(user, "backend", "")),
        "at": time.time(),
        "next": next_url,
    }


def pending_user(request: HttpRequest) -> tuple[Any, dict[str, Any]] | None:
    pending = request.session.get(PENDING_KEY)
    if not isinstance(pending, dict):
        return None
    at = pending.get("at")
    if not isinstance(at, int | float) or not 0 <= time.time() - at <= PENDING_SECONDS:
        request.session.pop(PENDING_KEY, None)
        return None
    user_id = pending.get("user")
    if not isinstance(user_id, str):
        return None
    user = get_user_model()._default_manager.filter(pk=user_id, is_active=True).first()
    if user is None:
        request.session.pop(PENDING_KEY, None)
        return None
    return user, pending
