"""What the health check found is kept per tenant: one row per unchanged finding."""

from __future__ import annotations

import socket

from keys.models import HealthResult, KeyHealthCheck
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from keys.tasks import check_tenant_key_health
from tests.keys.test_aws_source import _aws  # noqa: F401  (autouse)


def history(tenant) -> list[tuple[str, int]]:
    return [
        (h.result, h.runs)
        for h in KeyHealthCheck.objects.filter(tenant=tenant).order_by("first_at")
    ]


def test_repeated_findings_count_runs_and_a_change_starts_a_row(byok, settings) -> None:
    tenant = byok["acme"].tenant
    assert key_health_check(tenant=tenant) == "ok"
    assert check_tenant_key_health(str(tenant.pk)) == "ok"  # the task support enqueues
    assert history(tenant) == [(HealthResult.OK, 2)]
    # Nothing listens on this port: the key store is unreachable.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    settings.KEYWARD_AWS_TIMEOUT_SECONDS = 1
    reset_for_tests()
    assert key_health_check(tenant=tenant) == "degraded"
    rows = list(KeyHealthCheck.objects.filter(tenant=tenant).order_by("first_at"))
    assert [(r.result, r.runs) for r in rows] == [(HealthResult.OK, 2), (HealthResult.DEGRADED, 1)]
    assert rows[1].message.startswith("key store unreachable")
    assert rows[0].last_at <= rows[1].first_at


def test_a_vendor_managed_tenant_is_not_checked_nor_noted(acme) -> None:
    assert key_health_check(tenant=acme.tenant) == "skipped"
    assert not KeyHealthCheck.objects.filter(tenant=acme.tenant).exists()
