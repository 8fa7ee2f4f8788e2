"""gunicorn's settings for Keyward: `gunicorn -c python:console.gunicorn console.wsgi:application`.

Only what the metrics need: a worker that exits takes its 'live' gauge values
(the size of its DEK cache) out of /metrics' sums. Its counters stay, so that
totals never go backwards.
"""

from __future__ import annotations

import os
from typing import Any


def worker_exit(server: Any, worker: Any) -> None:
    # Runs in the worker, after the settings set PROMETHEUS_MULTIPROC_DIR: the
    # import is deferred to here because prometheus-client picks its storage
    # when first imported, which must not happen in this config file.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(worker.pid)
