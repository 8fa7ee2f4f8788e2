from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from telemetry.context import request_id_set
from telemetry.metrics import HTTP_DURATION, HTTP_REQUESTS, method_label

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

request_log = logging.getLogger("keyward.request")


class RequestIdMiddleware:
    """Tag each request with an id that audit events and logs can quote.

    An incoming X-Request-ID from a proxy is kept when it looks like an id;
    anything else is replaced, so a client cannot inject text into the trail.
    The id is also set for everything the request runs (telemetry.context):
    audit events of services that never see the request carry it too.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        with request_id_set(request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def route_of(request: HttpRequest) -> str:
    """The URL pattern's name ("api:records"), never the path: one series per route."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    # Django names an unnamed pattern by its view's dotted path: not a route name.
    return match.view_name if match.url_name else "unnamed"


def tenant_of(request: HttpRequest) -> str:
    tenant = getattr(request, "tenant", None)  # set by the API's authentication
    if tenant is not None:
        return str(tenant.slug)
    match = getattr(request, "resolver_match", None)
    slug = match.kwargs.get("slug", "") if match is not None else ""
    return str(slug)[:63]


def actor_of(request: HttpRequest) -> str:
    """Who asked, as kind and id (never a name or an address): audit has the rest."""
    token = getattr(request, "api_token", None)
    if token is not None:
        return f"api:{token.pk}"
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return "anonymous"


class RequestLogMiddleware:
    """One JSON log line and the request metrics for every request.

    After RequestIdMiddleware (so the line carries the id), before the others,
    so that the time includes them and the user and route they set are known.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        route = route_of(request)
        method = method_label(request.method)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_DURATION.labels(route, method).observe(elapsed)
        request_log.info(
            "%s %s %s",
            method,
            route,
            response.status_code,
            extra={
                "event": "request",
                "tenant": tenant_of(request),
                "actor": actor_of(request),
                "route": route,
                "method": method,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response
