"""Browser flows for a KMIP server key and an Azure Key Vault key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from console.celery import app as celery_app
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import PASSWORD, make_tenant
from tests.support import kmip
from tests.support.worker import celery_worker

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning"),
]


def wait_until_enabled(page: Page) -> None:
    expect(page.get_by_role("status")).to_contain_text("Moving your data keys under your key")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=enable-progress]')", timeout=60_000
    )
    page.reload()


def test_kmip_wrong_ca_fails_naming_tls_then_the_right_one_enables_encrypt(
    page: Page, sign_in: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(30)))
    server = kmip.kmip_settings()
    with celery_worker(tmp_path / "worker.log") as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.key_admin.username, PASSWORD)
        page.get_by_role("link", name="Keys", exact=True).click()
        page.get_by_test_id("bring-kmip").click()
        expect(page.get_by_test_id("enable")).to_be_disabled()

        page.get_by_label("KMIP server host").fill(server.host)
        page.get_by_label("Port").fill(str(server.port))
        page.get_by_label("Server CA certificate (PEM)").set_input_files(kmip.other_ca_cert())
        page.get_by_label("Client certificate (PEM)").set_input_files(kmip.client_cert())
        page.get_by_label("Client private key (PEM)").set_input_files(kmip.client_key())
        page.get_by_test_id("save-and-test").click()
        checks = page.get_by_test_id("checks")
        expect(checks).to_contain_text("Failed: TLS connection")
        expect(checks).to_contain_text("certificate")
        expect(page.get_by_test_id("enable")).to_be_disabled()

        # The right CA; the saved client certificate and key are kept.
        page.get_by_label("Server CA certificate (PEM)").set_input_files(kmip.ca_cert())
        page.get_by_test_id("save-and-test").click()
        expect(page.get_by_role("status")).to_contain_text("Every check passed.")
        expect(checks).to_contain_text("Passed: Protocol versions")
        expect(page.get_by_test_id("enable")).to_be_enabled()

        page.get_by_test_id("enable").click()
        wait_until_enabled(page)
        expect(page.get_by_test_id("protection-mode")).to_have_text("KMIP server key")
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE


def test_azure_register_test_enable_then_a_new_version_pauses_with_a_banner(
    page: Page,
    sign_in: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    azure: Any,
    settings: Any,
) -> None:
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(30)))
    worker_env = {
        "KEYWARD_AZURE_LOOPBACK_VAULT_PORT": str(settings.KEYWARD_AZURE_LOOPBACK_VAULT_PORT),
        "KEYWARD_AZURE_AUTHORITY_HOST": settings.KEYWARD_AZURE_AUTHORITY_HOST,
        "KEYWARD_AZURE_CA_BUNDLE": settings.KEYWARD_AZURE_CA_BUNDLE,
    }
    with celery_worker(tmp_path / "worker.log", worker_env) as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.key_admin.username, PASSWORD)
        page.get_by_role("link", name="Keys", exact=True).click()
        page.get_by_test_id("bring-azure").click()
        page.get_by_label("Vault URL").fill(azure.vault_url)
        page.get_by_label("Key name").fill(azure.key_name)
        page.get_by_label("Directory (tenant) ID").fill(azure.tenant_id)
        page.get_by_label("Application (client) ID").fill(azure.client_id)
        page.get_by_label("Client secret", exact=True).fill(azure.secret)
        page.get_by_test_id("save-and-test").click()
        expect(page.get_by_role("status")).to_contain_text("Every check passed.")
        expect(page.get_by_test_id("checks")).to_contain_text("Passed: Round trip")

        page.get_by_test_id("enable").click()
        wait_until_enabled(page)
        expect(page.get_by_test_id("protection-mode")).to_have_text("Azure Key Vault key")
        expect(page.get_by_test_id("state-banner")).to_have_count(0)

        # The customer adds a key version in Key Vault; the health check notices.
        new_version = azure.server.add_version(azure.key_name).version
        assert key_health_check(tenant=acme.tenant) == "rotation_pending"
        page.reload()
        banner = page.get_by_test_id("state-banner")
        expect(banner).to_contain_text("Service paused: a key rotation needs your confirmation")
        banner.get_by_role("link", name="Review and confirm").click()
        expect(page.get_by_test_id("new-version")).to_have_text(new_version)
        page.get_by_test_id("confirm-rotation").click()
        expect(page.get_by_role("status")).to_contain_text("Confirmed")
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=enable-progress]')", timeout=60_000
        )
        page.reload()
        expect(page.get_by_test_id("state-banner")).to_have_count(0)
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE


def test_enabling_a_key_on_a_tenant_with_objects_moves_them_with_a_progress_bar(
    page: Page,
    sign_in: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    from objects import keyring, locations
    from objects.models import Location, StoredObject
    from objects.services import object_put

    root = tmp_path / "objects"
    settings.KEYWARD_OBJECT_ROOT = root
    locations.forget()
    keyring.forget()
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    for n in range(150):
        object_put(tenant=acme.tenant, key=f"exports/{n:04}.csv", chunks=[b"x" * 3000])
    server = kmip.kmip_settings()
    with celery_worker(tmp_path / "worker.log", {"KEYWARD_OBJECT_ROOT": str(root)}) as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.owner.username, PASSWORD)
        page.get_by_role("link", name="Data", exact=True).click()
        expect(page.get_by_test_id("objects-total")).to_contain_text("150 objects")
        expect(page.get_by_test_id("objects-per-location")).to_contain_text("Shared")

        page.get_by_role("link", name="Keys", exact=True).click()
        page.get_by_test_id("bring-kmip").click()
        page.get_by_label("KMIP server host").fill(server.host)
        page.get_by_label("Port").fill(str(server.port))
        page.get_by_label("Server CA certificate (PEM)").set_input_files(kmip.ca_cert())
        page.get_by_label("Client certificate (PEM)").set_input_files(kmip.client_cert())
        page.get_by_label("Client private key (PEM)").set_input_files(kmip.client_key())
        page.get_by_test_id("save-and-test").click()
        expect(page.get_by_role("status")).to_contain_text("Every check passed.")
        page.get_by_test_id("enable").click()
        expect(page.get_by_role("status")).to_contain_text("Moving your data keys under your key")
        expect(page.get_by_test_id("state-banner")).to_be_visible()  # paused while moving

        with page.expect_response(lambda r: r.url.endswith("/t/acme/data/")) as first:
            page.get_by_role("link", name="Data", exact=True).click()
        # The page was drawn mid-move: its objects section follows the move...
        drawn = first.value.text()
        assert 'hx-trigger="every 1s"' in drawn
        assert "object-migration-progress" in drawn or "object-migration-waiting" in drawn
        # ...by itself (no reload) until the objects are all in the tenant's
        # dedicated storage and the move is done.
        expect(page.get_by_test_id("objects-per-location")).to_contain_text(
            "Dedicated to Acme", timeout=90_000
        )
        expect(page.get_by_test_id("object-migrations")).to_contain_text("Done", timeout=60_000)
        expect(page.get_by_test_id("object-migrations")).to_contain_text(
            "150 copied, 150 verified of 150"
        )
        expect(page.get_by_text("No move under way.")).to_be_visible()
        page.reload()
        expect(page.get_by_test_id("state-banner")).to_have_count(0)
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    assert set(StoredObject.objects.values_list("location", flat=True)) == {Location.DEDICATED}
