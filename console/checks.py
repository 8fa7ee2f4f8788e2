"""System checks of Keyward's own settings (`manage.py check --deploy`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def insecure_http_loopback(**kwargs: Any) -> list[CheckMessage]:
    if not getattr(settings, "KEYWARD_INSECURE_HTTP_LOOPBACK", False):
        return []
    return [
        Warning(
            "KEYWARD_INSECURE_HTTP_LOOPBACK is on: cookies are sent without Secure, "
            "there is no redirect to HTTPS and no HSTS.",
            hint="For trying production settings on this machine only; unset it "
            "and serve the console over HTTPS.",
            id="keyward.W001",
        )
    ]
