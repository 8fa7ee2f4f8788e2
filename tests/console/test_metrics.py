"""/metrics: only with the token; the families move after real work; every process counts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from audit.services import Actor
from console.metrics import forget_exited_processes
from keys.models import DataKey, KeySource
from keys.providers.base import KeyMaterialInvalid
from keys.registry import provider_for
from keys.runtime import dek_context
from keys.services.deks import dek_rotate
from keys.tasks import check_key_health, rotate_dek_for_count
from objects.models import Direction, Location, MigrationState, ObjectMigration
from tenants.models import ServiceState, Tenant
from tests.api.conftest import Api, issue, user_record
from tests.conftest import login
from tests.support.worker import celery_worker

TOKEN = "metrics-token-" + "x" * 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def token(settings: Any) -> str:
    settings.KEYWARD_METRICS_TOKEN = TOKEN
    return TOKEN


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[Sample]:
    """The text format's samples (prometheus-client's own parser is slow on thousands)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, labels, number = match.groups()
        found.append(Sample(name, dict(_LABEL.findall(labels or "")), float(number)))
    return found


def scrape(token: str = TOKEN) -> list[Sample]:
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.content.decode())


def value(scraped: list[Sample], name: str, **labels: str) -> float:
    """The sample's value, 0 when it is not there yet."""
    for sample in scraped:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def test_without_the_setting_there_is_no_metrics_page(settings, db) -> None:
    settings.KEYWARD_METRICS_TOKEN = None
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404
    assert b"keyward_" not in response.content


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token-of-a-plausible-length-xxxxxxxxxxxxxx",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
    ],
)
def test_a_missing_or_wrong_token_is_401(token, db, header) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = Client().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"keyward_" not in response.content


def test_only_get_is_answered(token, db) -> None:
    response = Client().post("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 405


def test_a_malformed_token_setting_stops_startup(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYWARD_")}
    env.update(
        KEYWARD_MODE="embedded",
        KEYWARD_DATA_DIR=str(tmp_path),
        KEYWARD_METRICS_TOKEN="short",
        DJANGO_SETTINGS_MODULE="console.settings",
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "KEYWARD_METRICS_TOKEN must be 32 to 256 printable characters" in result.stderr


def test_key_store_calls_the_cache_api_requests_and_audit_appends_are_counted(
    token, acme, django_capture_on_commit_callbacks
) -> None:
    before = scrape()
    local = {"provider": "local"}
    with django_capture_on_commit_callbacks(execute=True):
        api = Api(issue(acme.tenant).text)
        created = api.post("records", user_record())
        assert created.status_code == 201
        assert api.get(f"records/{created.json()['id']}").status_code == 200
        dek_rotate(tenant=acme.tenant, actor=Actor.system("tests"), reason="metrics")
    source = KeySource.objects.get(tenant=acme.tenant)
    with pytest.raises(KeyMaterialInvalid):
        provider_for(source).unwrap(b"\x00" * 60, dek_context(str(acme.tenant.pk), 1), "root-1")
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    calls = "keyward_key_store_calls_total"
    # The new tenant's DEK was unwrapped on the write (a miss), then served from the cache.
    assert moved(calls, operation="unwrap", outcome="success", **local) >= 1
    assert moved(calls, operation="wrap", outcome="success", **local) >= 1  # the rotation
    assert moved(calls, operation="unwrap", outcome="invalid", **local) >= 1
    assert moved("keyward_key_store_call_duration_seconds_count", operation="unwrap", **local) >= 2
    assert moved("keyward_dek_cache_misses_total") >= 1
    assert moved("keyward_dek_cache_unwraps_total") >= 1
    assert moved("keyward_dek_cache_hits_total") >= 1
    requests = "keyward_http_requests_total"
    assert moved(requests, route="api:records", method="POST", status="201") >= 1
    assert moved(requests, route="api:record", method="GET", status="200") >= 1
    assert (
        moved("keyward_http_request_duration_seconds_count", route="api:records", method="POST")
        >= 1
    )
    # The token's creation and the rotation, once committed.
    assert moved("keyward_audit_events_total", outcome="success") >= 2


def test_a_value_another_process_wrote_is_added_up(token, db) -> None:
    task = f"tests.other_process_{uuid.uuid4().hex[:8]}"
    code = (
        "from telemetry.metrics import TASKS, TASK_DURATION;"
        f"TASKS.labels({task!r}, 'success').inc(3);"
        f"TASK_DURATION.labels({task!r}).observe(0.2)"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(settings.KEYWARD_METRICS_DIR)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)
    text = scrape()
    assert value(text, "keyward_celery_tasks_total", task=task, outcome="success") == 3
    assert value(text, "keyward_celery_task_duration_seconds_count", task=task) == 1


def test_tenants_by_state_a_waiting_rotation_and_a_failed_move(token, acme, globex) -> None:
    two_days_ago = timezone.now() - timedelta(days=2)
    Tenant.objects.filter(pk=globex.tenant.pk).update(
        state=ServiceState.ROTATION_PENDING, state_changed_at=two_days_ago
    )
    text = scrape()
    assert value(text, "keyward_tenants", state="vendor_managed") == 1
    assert value(text, "keyward_tenants", state="rotation_pending") == 1
    assert value(text, "keyward_tenants", state="revoked") == 0
    states = {s.labels["state"] for s in text if s.name == "keyward_tenants"}
    assert states == set(ServiceState.values)
    waited = value(text, "keyward_rotation_pending_oldest_seconds")
    assert 2 * 86400 <= waited < 2 * 86400 + 600
    assert value(text, "keyward_object_moves_failed") == 0
    assert value(text, "keyward_health_check_interval_seconds") == (
        settings.KEYWARD_HEALTH_CHECK_SECONDS
    )

    dek = DataKey.objects.filter(tenant=acme.tenant).earliest("version")
    failed = ObjectMigration.objects.create(
        tenant=acme.tenant,
        direction=Direction.TO_DEDICATED,
        state=MigrationState.FAILED,
        source_location=Location.SHARED,
        target_location=Location.DEDICATED,
        target_dek=dek,
    )
    assert value(scrape(), "keyward_object_moves_failed") == 1
    # A retried move that is running again is not a failed one any more.
    ObjectMigration.objects.filter(pk=failed.pk).update(started=two_days_ago)
    ObjectMigration.objects.create(
        tenant=acme.tenant,
        direction=Direction.TO_DEDICATED,
        state=MigrationState.COPYING,
        source_location=Location.SHARED,
        target_location=Location.DEDICATED,
        target_dek=dek,
    )
    assert value(scrape(), "keyward_object_moves_failed") == 0


def test_a_health_round_reports_its_duration_and_end(token, db) -> None:
    started = time.time()
    check_key_health()
    text = scrape()
    assert value(text, "keyward_health_round_completed_timestamp_seconds") >= started - 1
    assert 0 <= value(text, "keyward_health_round_duration_seconds") < 60


def test_requests_are_labelled_by_route_name_never_by_path(token, acme, globex) -> None:
    before = scrape()
    api = Api(issue(acme.tenant).text)
    for _ in range(3):
        assert api.get(f"records/{uuid.uuid4()}").status_code == 404
    Client().get(f"/no-such-page-{uuid.uuid4()}")
    login(acme.owner).get("/t/acme/keys/")
    login(globex.owner).get("/t/globex/keys/")
    after = scrape()

    def moved(**labels: str) -> float:
        name = "keyward_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    # Three records, two tenants, one made-up path: one series each.
    assert moved(route="api:record", method="GET", status="404") >= 3
    assert moved(route="keys:overview", method="GET", status="200") >= 2
    assert moved(route="unmatched", method="GET", status="404") >= 1
    # The series this test's requests moved (the folder keeps earlier runs' too).
    earlier = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in before}
    routes = {
        s.labels["route"]
        for s in after
        if "route" in s.labels and earlier.get((s.name, tuple(sorted(s.labels.items())))) != s.value
    }
    names = url_names(get_resolver().url_patterns)
    assert {"api:record", "keys:overview", "unmatched"} <= routes
    # Route names only (the admin's too): never a path, an id or a slug.
    assert all(re.fullmatch(r"[\w.-]+(:[\w.-]+)*", route) for route in routes), routes
    assert not [route for route in routes if re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", route)]
    assert not routes - names - {"unmatched", "unnamed"}, routes - names


def url_names(patterns: list[Any], namespace: str = "") -> set[str]:
    """Every URL name of the project, the admin's included, with its namespaces."""
    names = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= url_names(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(namespace + pattern.name)
    return names


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_logs_one_line_per_task_and_its_counts_reach_the_scrape(
    token, tmp_path
) -> None:
    tenant = Tenant.objects.create(name="Initech", slug="initech")
    before = scrape()
    log = tmp_path / "worker.log"
    with celery_worker(log) as worker:
        result = rotate_dek_for_count.apply_async(args=(str(tenant.pk),), queue=worker.queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = _json_lines(log)
            if any(line.get("task_id") == result.id for line in lines):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker did not log the task in 60 s:\n" + log.read_text())
    (line,) = [line for line in lines if line.get("task_id") == result.id]
    assert line["event"] == "task"
    assert line["task"] == "keys.rotate_dek_for_count"
    assert line["status"] == "success"
    assert line["tenant"] == "initech"
    assert line["level"] == "INFO" and line["duration_ms"] >= 0
    after = scrape()
    labels = {"task": "keys.rotate_dek_for_count", "outcome": "success"}
    assert value(after, "keyward_celery_tasks_total", **labels) == (
        value(before, "keyward_celery_tasks_total", **labels) + 1
    )


def _json_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    for text in path.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            try:
                found.append(json.loads(text))
            except ValueError:
                continue
    return found


def test_the_answer_sets_no_cookie_and_is_not_cached(token, db) -> None:
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert not response.cookies
    assert response["Cache-Control"] == "no-store"


def test_startup_forgets_the_files_of_exited_processes_only(tmp_path) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_out)
    dead = int(exited.stdout)
    mine = os.getpid()
    names = [
        f"counter_{mine}.db",
        f"gauge_livesum_{mine}.db",
        f"counter_{dead}.db",
        f"histogram_{dead}.db",
        f"gauge_mostrecent_{dead}.db",
        "notes.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = forget_exited_processes(tmp_path)
    assert sorted(path.name for path in removed) == sorted(names[2:5])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [names[0], names[1], "notes.txt"]
    )


_out: dict[str, Any] = {"capture_output": True, "text": True, "check": True, "timeout": 60}
