"""Support signs in, filters the tenant list, opens a tenant and runs its health check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from console.celery import app as celery_app
from keys.models import KeyHealthCheck, KeySource, SourceKind
from keys.runtime import reset_for_tests
from keys.services.sources import byok_enable_run
from tenants.models import ServiceState
from tests.conftest import PASSWORD, login, make_tenant
from tests.e2e.conftest import sign_in_with_code, staff_with_authenticator
from tests.keys.test_upload import customer_wraps, download, upload
from tests.support.worker import celery_worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_support_filters_opens_a_tenant_and_runs_the_health_check(
    page: Page, sign_in: Any, live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    make_tenant("Globex", "globex")
    secret = staff_with_authenticator("support@vendor.test")
    # Acme brings an uploaded key and enables it.
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path / "kit")
    customer_wraps(tmp_path / "kit")
    upload(
        client,
        "acme",
        (tmp_path / "kit" / "CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
    )
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.UPLOADED)
    client.post(reverse("keys:enable_source", args=["acme", source.pk]))
    byok_enable_run(source_id=str(source.pk))
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE

    with celery_worker(tmp_path / "worker.log") as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in_with_code(page, live_server.url, "support@vendor.test", secret)
        expect(page).to_have_url(f"{live_server.url}/support/")
        rows = page.get_by_test_id("support-row")
        expect(rows).to_have_count(2)
        page.get_by_label("State").select_option("byok_active")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("Acme")
        expect(rows.first).to_contain_text("Uploaded key")
        assert "state=byok_active" in page.url  # htmx pushed the filtered URL
        page.get_by_role("link", name="Acme").click()
        expect(page.get_by_test_id("support-state")).to_have_text("Protected by your key")
        expect(page.get_by_test_id("health-history")).to_contain_text("Never checked")
        page.get_by_test_id("run-health-check").click()
        expect(page.get_by_role("status")).to_contain_text("The health check runs now")
        for _ in range(30):
            if KeyHealthCheck.objects.filter(tenant=acme.tenant).exists():
                break
            page.wait_for_timeout(500)
        page.reload()
        expect(page.get_by_test_id("health-history")).to_contain_text("Key usable")
        expect(page.get_by_test_id("key-events")).to_contain_text("key.health_check_requested")
    # The customer sees who asked for the check, on their Audit page.
    page.get_by_role("button", name="Sign out").click()
    sign_in(acme.owner.username, PASSWORD)
    page.goto(f"{live_server.url}/t/acme/audit/")
    asked = page.get_by_test_id("audit-row").filter(has_text="key.health_check_requested")
    expect(asked).to_contain_text("support@vendor.test")
    expect(asked).to_contain_text("Vendor support")
