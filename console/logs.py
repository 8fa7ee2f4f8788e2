"""The log formatter and filters named by LOGGING in console/settings.py."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from telemetry.context import current_request_id


class ClientErrorWithoutTraceback(logging.Filter):
    """A 4xx answer is the client's doing: log it as one line, never a traceback.

    Django logs a refused request (PermissionDenied, a bad or suspicious
    request) with the exception attached, so every 403 would print the stack
    of the view that refused it. The record keeps its level and message (the
    status and the path); only the traceback goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True


# Attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id of the
    request or task being served, and what the caller passed as `extra`.

    Only `extra` fields with plain values are kept (str, int, float, bool, None),
    so an object that happens to ride on a record is never serialised whole.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Django logs a refused or failed request after the middleware returned: the
        # request it passes along still has its id.
        request_id = current_request_id() or getattr(
            getattr(record, "request", None), "request_id", ""
        )
        if isinstance(request_id, str) and request_id:
            line["request_id"] = request_id
        for name, value in record.__dict__.items():
            plain = value is None or isinstance(value, str | int | float | bool)
            if plain and name not in _STANDARD and not name.startswith("_") and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)
