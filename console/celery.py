from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state as worker_state
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

logger = logging.getLogger("keyward.worker")

app = Celery("keyward")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class BrokerWatchdog(bootsteps.StartStopStep):
    """Ends a worker whose consumer has had no broker connection for too long.

    Celery's consumer reconnects by itself after a broker restart, retrying for
    a long time, and an error inside that reconnect (celery/celery#10205) ends
    the reconnect for good: a worker up without a consumer takes no task.
    Exiting lets the supervisor start a fresh one; messages it had not
    acknowledged are delivered again.
    """

    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.limit = float(settings.KEYWARD_WORKER_BROKER_LOST_EXIT_SECONDS)
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self, parent: Any) -> None:
        # Started once: the consumer's steps stop and start again on every reconnect.
        if self.thread is None:
            self.thread = threading.Thread(
                target=self.watch, args=(parent,), name="broker-watchdog", daemon=True
            )
            self.thread.start()

    def shutdown(self, parent: Any) -> None:
        self.stopping.set()

    def watch(self, consumer: Any) -> None:
        lost_since: float | None = None
        while not self.stopping.wait(0.5):
            if worker_state.should_stop is not None or worker_state.should_terminate is not None:
                return  # a shutdown closes the connection on purpose
            # The consumer drops its connection when it fails and sets a new one
            # once connected again; a running task keeps it (and this quiet).
            if consumer.connection is not None:
                lost_since = None
                continue
            now = time.monotonic()
            lost_since = lost_since if lost_since is not None else now
            if now - lost_since >= self.limit:
                logger.critical(
                    "no broker connection for %.0f s: the worker exits to be restarted",
                    now - lost_since,
                )
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(1)


app.steps["consumer"].add(BrokerWatchdog)
