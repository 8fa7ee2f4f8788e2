"""Logging filters named by LOGGING in console/settings.py."""

from __future__ import annotations

import logging


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
