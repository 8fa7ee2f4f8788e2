"""`/metrics`: every process's counters added up, and figures read from the database.

The counters and histograms come from the files each process writes
(telemetry/metrics.py, multiprocess mode). What is state rather than events
(tenants by state, the oldest rotation waiting, failed moves) is read with a
few aggregate queries when Prometheus scrapes, so it is right whichever
process answers and however long ago anything changed.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Min, OuterRef, Subquery
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from keys.runtime import publish_cache_metrics
from objects.models import MigrationState, ObjectMigration
from tenants.models import ServiceState, Tenant


class StateCollector(Collector):
    """Gauges computed at scrape time from the database."""

    def collect(self) -> Iterator[Metric]:
        by_state = dict(
            Tenant.objects.order_by()
            .values_list("state")
            .annotate(n=Count("pk"))
            .values_list("state", "n")
        )
        tenants = GaugeMetricFamily("keyward_tenants", "Tenants by service state", labels=["state"])
        for state in ServiceState.values:
            tenants.add_metric([state], by_state.get(state, 0))
        yield tenants

        oldest = Tenant.objects.filter(state=ServiceState.ROTATION_PENDING).aggregate(
            oldest=Min("state_changed_at")
        )["oldest"]
        waiting = (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "keyward_rotation_pending_oldest_seconds",
            "How long the tenant paused longest for a key rotation has waited (0: none)",
            value=max(waiting, 0.0),
        )

        latest = (
            ObjectMigration.objects.filter(tenant=OuterRef("pk"))
            .order_by("-started")
            .values("state")[:1]
        )
        failed = (
            Tenant.objects.annotate(last_move=Subquery(latest))
            .filter(last_move=MigrationState.FAILED)
            .count()
        )
        yield GaugeMetricFamily(
            "keyward_object_moves_failed",
            "Tenants whose latest move of objects failed and waits for a retry",
            value=failed,
        )
        yield GaugeMetricFamily(
            "keyward_health_check_interval_seconds",
            "How often beat starts a round of key health checks (KEYWARD_HEALTH_CHECK_SECONDS)",
            value=settings.KEYWARD_HEALTH_CHECK_SECONDS,
        )


_VALUES_FILE = re.compile(r"[a-z_]+_(\d+)\.db")


def forget_exited_processes(folder: Path) -> list[Path]:
    """Delete the metric files of processes that no longer run (at startup: their
    counts belong to an earlier run). A running process's files are kept."""
    removed = []
    for path in folder.glob("*.db"):
        match = _VALUES_FILE.fullmatch(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    offered = credentials.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(offered.encode(), token.encode())


def metrics(request: HttpRequest) -> HttpResponse:
    """/metrics (GET, bearer token): 404 unless KEYWARD_METRICS_TOKEN is set."""
    token = settings.KEYWARD_METRICS_TOKEN
    if not token:
        raise Http404("metrics are not enabled")
    return _metrics(request, token)


@require_GET
def _metrics(request: HttpRequest, token: str) -> HttpResponse:
    if not _authorized(request, token):
        response = HttpResponse("A valid bearer token is required.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    publish_cache_metrics()  # this process's latest, not the last flush's
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.KEYWARD_METRICS_DIR))
    registry.register(StateCollector())
    # The classic text format (0.0.4), which every Prometheus version reads.
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response
