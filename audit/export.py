"""Streaming exports of a tenant's audit trail: CSV and JSON Lines.

`event_row` is also what the audit API (`/api/v1/audit/events`) returns per
event, so that a SIEM pulling events and a person exporting them read the same.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC
from typing import Any

from django.db.models import QuerySet

from audit.models import AuditEvent

COLUMNS = (
    "seq",
    "time",
    "actor_kind",
    "actor_id",
    "actor_display",
    "action",
    "target",
    "outcome",
    "reason",
    "ip",
    "user_agent",
    "request_id",
    "details",
    "prev_hash",
    "hash",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def event_row(event: AuditEvent) -> dict[str, Any]:
    """One event as the exports and the audit API give it (the same members, alike)."""
    return {
        "seq": event.seq,
        "time": event.time.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_kind": event.actor_kind,
        "actor_id": event.actor_id,
        "actor_display": event.actor_display,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "reason": event.reason,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    # Spreadsheets run cells that start like a formula; neutralise them.
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


class _Echo:
    def write(self, value: str) -> str:
        return value


def _events(events: QuerySet[AuditEvent]) -> Iterator[AuditEvent]:
    return events.order_by("seq").iterator(chunk_size=2000)


def csv_stream(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for event in _events(events):
        row = event_row(event)
        yield writer.writerow([_cell(row[name]) for name in COLUMNS])


def jsonl_stream(events: QuerySet[AuditEvent]) -> Iterator[str]:
    for event in _events(events):
        yield json.dumps(event_row(event), sort_keys=True, ensure_ascii=False) + "\n"
