from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse

from audit.models import Outcome
from console.mfa import services
from console.mfa.session import SIGNED_IN_KEY, WITH_SECOND_FACTOR


class SecondFactorMiddleware:
    """A signed-in session that did not pass the second factor, for someone who
    must (vendor staff, superusers) or can (anyone with a factor), is ended.

    Keyward's own sign-in never makes such a session; this is the guard for
    any other way of making one (an old session, a forced login), so that the
    request goes on as an anonymous one: every page asks to sign in.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            signed_in = request.session.get(SIGNED_IN_KEY)
            if signed_in != WITH_SECOND_FACTOR and (
                services.must_have_factor(user) or services.has_factor(user)
            ):
                services.audit_event(
                    user,
                    "auth.second_factor",
                    outcome=Outcome.DENIED,
                    reason="a session without the second factor was ended",
                    request=request,
                )
                request.session.flush()
                request.user = AnonymousUser()
        return self.get_response(request)
