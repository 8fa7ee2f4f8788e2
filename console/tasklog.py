"""One JSON log line and the task metrics for every Celery task run.

Connected to Celery's signals by ConsoleConfig.ready(), in every process;
they fire in workers only. While a task runs, its id is the request id
(telemetry.context), so its log lines and audit events can be found together.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from contextvars import Token
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_process_shutdown
from prometheus_client import multiprocess

from telemetry.context import reset_request_id, set_request_id
from telemetry.metrics import TASK_DURATION, TASKS
from tenants.models import Tenant

task_log = logging.getLogger("keyward.task")

# task id -> (start, the request id's reset token); a worker runs a task in one thread.
_running: dict[str, tuple[float, Token[str]]] = {}


@task_prerun.connect
def _task_started(task_id: str = "", **_: Any) -> None:
    _running[task_id] = (time.perf_counter(), set_request_id(task_id))


@task_postrun.connect
def _task_finished(
    task_id: str = "",
    task: Any = None,
    args: Any = (),
    kwargs: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    started, token = _running.pop(task_id, (time.perf_counter(), None))
    elapsed = time.perf_counter() - started
    name = str(getattr(task, "name", "") or "unknown")
    outcome = (state or "unknown").lower()
    TASKS.labels(name, outcome).inc()
    TASK_DURATION.labels(name).observe(elapsed)
    task_log.log(
        logging.INFO if outcome == "success" else logging.WARNING,
        "task %s %s",
        name,
        outcome,
        extra={
            "event": "task",
            "task": name,
            "task_id": task_id,
            "status": outcome,
            "duration_ms": round(elapsed * 1000, 2),
            "tenant": _tenant_slug(task, args, kwargs or {}),
        },
    )
    if token is not None:
        with contextlib.suppress(ValueError):  # set in another context: nothing to undo
            reset_request_id(token)


def _tenant_slug(task: Any, args: Any, kwargs: dict[str, Any]) -> str:
    """The slug of the tenant a task was given by id (`tenant_id`), else ""."""
    try:
        bound = inspect.signature(task.run).bind_partial(*args, **kwargs)
    except (TypeError, ValueError, AttributeError):
        return ""
    tenant_id = bound.arguments.get("tenant_id")
    if not tenant_id:
        return ""
    try:
        slug = Tenant.objects.filter(pk=tenant_id).values_list("slug", flat=True).first()
    except Exception:  # a log line never fails a task (a malformed id, the database gone)
        return ""
    return slug or ""


@worker_process_shutdown.connect
def _forget_live_gauges(**_: Any) -> None:
    """A pool process that exits leaves no 'live' gauge values behind (its cache size)."""
    with contextlib.suppress(Exception):
        multiprocess.mark_process_dead(os.getpid())
