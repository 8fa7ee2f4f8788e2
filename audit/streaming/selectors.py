from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from audit.models import AuditChain, StreamDestination, StreamState
from audit.services import chain_key


def stream_destination(tenant: Any) -> StreamDestination | None:
    return StreamDestination.objects.filter(tenant=tenant).first()


def stream_state(tenant: Any) -> str | None:
    """The state of the tenant's destination (a StreamState), None without one."""
    return StreamDestination.objects.filter(tenant=tenant).values_list("state", flat=True).first()


def paused_streams(tenant: Any) -> QuerySet[StreamDestination]:
    return StreamDestination.objects.filter(tenant=tenant, state=StreamState.PAUSED)


def paused_stream(tenant: Any) -> StreamDestination | None:
    """The tenant's destination if it is paused (every page shows a banner)."""
    return paused_streams(tenant).first()


def stream_backlog(destination: StreamDestination) -> int:
    """How many events wait to be delivered."""
    head = AuditChain.objects.filter(key=chain_key(destination.tenant)).first()
    return max(0, (head.last_seq if head else 0) - destination.cursor)
