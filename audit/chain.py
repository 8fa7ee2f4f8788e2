"""The hash chain: how an audit event is made canonical and hashed.

Plain functions over plain values so that the verifier and the writer cannot
disagree about what was hashed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
    "chain",
    "seq",
    "tenant_id",
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
)


def canonical(values: dict[str, Any]) -> bytes:
    """UTF-8 JSON with sorted keys and no whitespace; datetimes as UTC ISO 8601."""
    doc: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = values[name]
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        elif value is not None and name in ("tenant_id", "ip"):
            value = str(value)
        doc[name] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(values: dict[str, Any], prev_hash: str) -> str:
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical(values))
    return digest.hexdigest()


@dataclass(frozen=True)
class BrokenLink:
    chain: str
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"chain {self.chain}: event #{self.seq}: {self.problem}"
