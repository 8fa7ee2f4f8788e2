"""The API's error model: one exception, one renderer.

Every error the API gives is `{"error": {"code", "message", "field"?}}` with
the status below. Raise `ApiError` anywhere inside a view wrapped by
`api.auth.api_endpoint`; the decorator renders it (and maps the envelope's
and the key stores' exceptions onto the codes here). Outside the views, the
shell's error handlers (`console.errors`) answer every other 400, 403, 404 and
500 under /api/v1/ with the same body: an unknown path is a `not_found`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.http import JsonResponse

# code -> HTTP status; the OpenAPI document is built from this table.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "The request could not be understood (malformed or suspicious)."),
    "unauthorized": (401, "Missing, malformed, unknown, expired or revoked token."),
    "forbidden": (403, "The token lacks the scope this endpoint needs."),
    "key_revoked": (403, "The tenant's key is revoked or destroyed: its data cannot be read."),
    "not_found": (404, "No such endpoint, record or object (or it is another tenant's)."),
    "method_not_allowed": (405, "The endpoint does not answer this method."),
    "invalid_json": (400, "The body is not a JSON object."),
    "invalid_field": (400, "A field is unknown, missing or malformed; `field` names it."),
    "unknown_kind": (400, "The record kind is not one of device, user."),
    "invalid_cursor": (400, "The pagination cursor was not issued by this API."),
    "invalid_idempotency_key": (400, "The Idempotency-Key header is empty or too long."),
    "conflict": (409, "A record with this kind and external_id exists."),
    "idempotency_key_reused": (409, "The Idempotency-Key was used with a different request."),
    "too_large": (413, "The body is over the configured size limit."),
    "server_error": (500, "Keyward failed to answer; retry, and report it if it persists."),
    "paused": (503, "Writes are paused (a key rotation to confirm); retry after Retry-After."),
    "migrating": (503, "The tenant's data is moving between key stores; retry after Retry-After."),
    "key_unavailable": (503, "The key store cannot be reached and cached keys expired; retry."),
    "storage_unavailable": (503, "Object storage cannot be reached; retry after Retry-After."),
}


class ApiError(Exception):
    """An API error response; `status` and `code` should match `ERROR_CODES`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def render_error(exc: ApiError) -> JsonResponse:
    response = JsonResponse(error_body(exc.code, exc.message, exc.field), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    response["Cache-Control"] = "no-store"
    return response
