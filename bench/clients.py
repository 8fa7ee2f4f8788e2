"""A django.test.Client signed in as a console user would be, for the page benchmarks.

A forced login alone is a session without the second factor: the console's
SecondFactorMiddleware ends it for vendor staff (and anyone with a factor),
so every timed request would be an anonymous one answered 404 or a redirect.
The session is marked as signed in with the second factor, as Keyward's own
sign-in marks it. Imported after django.setup().
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.test import Client

from console.mfa.session import SIGNED_IN_KEY, WITH_SECOND_FACTOR
from tenants.signals import _on_login


def client_host() -> str:
    """A host the settings allow (the test client's default, testserver, may not be)."""
    for host in settings.ALLOWED_HOSTS:
        if host and host != "*" and not host.startswith("."):
            return str(host)
    return "localhost"


def signed_in_client(user: Any, *, record_login: bool = True) -> Client:
    """A client signed in as `user` with the second factor passed.

    `record_login=False` keeps the sign-in out of the audit chain (the audit
    benchmark reuses its chain of exactly EVENTS events from run to run).
    """
    client = Client(HTTP_HOST=client_host())
    if not record_login:
        user_logged_in.disconnect(dispatch_uid="audit_login")
    try:
        client.force_login(user)
    finally:
        if not record_login:
            user_logged_in.connect(_on_login, dispatch_uid="audit_login")
    session = client.session
    session[SIGNED_IN_KEY] = WITH_SECOND_FACTOR
    session.save()
    return client
