"""The id of the request (or task) being served, for audit events and log lines.

Set by the shell's middleware and Celery signal handlers; read by audit's
`record` and the JSON log formatter, neither of which sees the request object
everywhere it is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token

_request_id: ContextVar[str] = ContextVar("keyward_request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


@contextlib.contextmanager
def request_id_set(request_id: str) -> Iterator[None]:
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def set_request_id(request_id: str) -> Token[str]:
    """For code that starts and ends in separate callbacks (Celery's signals)."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str]) -> None:
    _request_id.reset(token)
