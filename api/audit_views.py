"""The audit API: a tenant's audit trail, in chain order, for a SIEM to pull.

`GET /api/v1/audit/events?after=<cursor>&limit=<n>` with a token that has
`audit:read` answers `{"events": [...], "next": <cursor>}`. Each event is the
export's row (`audit.export.event_row`), with its `hash` and `prev_hash`, so
that a SIEM can check that the chain it holds has no gap and was not altered.

`next` is where to resume: after the last event returned, or, on an empty
page, the cursor that was sent. A client keeps the last `next` it got and polls
with it; it is null only for an empty trail read from its start. Fewer events
than `limit` means the client has caught up.
"""

from __future__ import annotations

from django.core import signing
from django.http import HttpRequest, HttpResponse, JsonResponse

from api.auth import api_endpoint
from api.errors import ApiError
from api.models import Scope
from audit.export import event_row
from audit.selectors import audit_events_after
from audit.services import chain_key
from tenants.models import Tenant

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CURSOR_SALT = "api.audit.cursor"


def cursor_for(tenant: Tenant, seq: int) -> str:
    """An opaque, signed position in the tenant's chain (bound to that chain)."""
    return signing.dumps([chain_key(tenant), seq], salt=CURSOR_SALT)


def _after(request: HttpRequest, tenant: Tenant) -> tuple[int, str | None]:
    """The seq to read after, and the cursor sent (0 and None: the chain's start)."""
    cursor = request.GET.get("after")
    if not cursor:
        return 0, None
    try:
        position = signing.loads(cursor, salt=CURSOR_SALT)
    except signing.BadSignature:
        raise ApiError(
            400, "invalid_cursor", "Pass back a `next` this API gave, unchanged.", field="after"
        ) from None
    if not (
        isinstance(position, list)
        and len(position) == 2
        and isinstance(position[1], int)
        and not isinstance(position[1], bool)
        and position[1] >= 0
    ):
        raise ApiError(400, "invalid_cursor", "Pass back a `next` this API gave.", field="after")
    if position[0] != chain_key(tenant):
        raise ApiError(
            400,
            "invalid_cursor",
            "This cursor was given for another tenant's audit trail.",
            field="after",
        )
    return position[1], cursor


def _limit(request: HttpRequest) -> int:
    raw = request.GET.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400,
            "invalid_field",
            f"limit must be an integer from 1 to {MAX_LIMIT}.",
            field="limit",
        )
    return int(raw)


# needs_key=False: the trail is not encrypted under the tenant's key, and it is
# most wanted when that key was revoked.
@api_endpoint(Scope.AUDIT_READ, methods=("GET",), needs_key=False)
def audit_events(request: HttpRequest) -> HttpResponse:
    """The token's tenant's audit events after the cursor, oldest first.

    Reading is deliberately not audited per call: SIEMs poll, and an event per
    poll would grow the trail forever with reads of itself. What is audited is
    the grant of access: creating (and revoking) a token with `audit:read` is
    recorded by the token services, and the token's last use is kept on it.
    """
    tenant: Tenant = request.tenant  # type: ignore[attr-defined]
    after, sent = _after(request, tenant)
    limit = _limit(request)
    events = audit_events_after(tenant, after=after, limit=limit)
    next_cursor = cursor_for(tenant, events[-1].seq) if events else sent
    return JsonResponse({"events": [event_row(e) for e in events], "next": next_cursor})
