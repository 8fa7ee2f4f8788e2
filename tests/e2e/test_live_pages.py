"""Pages follow the tenant live: the walkthrough of an administrator who brings a
key, watches the move, rotates, revokes and restores, in Chromium, with no reload
and no typed URL between an action and what the page must show after it."""

from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from audit.services import Actor
from console.celery import app as celery_app
from keys.runtime import reset_for_tests
from objects.services import object_put
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tenants.states import tenant_transition
from tests.conftest import PASSWORD, make_tenant
from tests.keys.test_upload import customer_wraps
from tests.support.worker import celery_worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _upload_in_browser(page: Page, folder: Path, *, same_key_from: Path | None = None) -> None:
    """On the upload page: download parameters, wrap (a new key, or the same one
    again), upload."""
    with page.expect_download() as info:
        page.get_by_test_id("download-parameters").click()
    with zipfile.ZipFile(info.value.path()) as bundle:
        bundle.extractall(folder)
    if same_key_from is None:
        customer_wraps(folder)
    else:
        shutil.copy(same_key_from / "CustomerKey.bin", folder / "CustomerKey.bin")
        customer_wraps(folder, {2})
    page.get_by_label("CustomerEncryptionKey.bin (your wrapped key)").set_input_files(
        str(folder / "CustomerEncryptionKey.bin")
    )
    page.get_by_label("ImportToken.bin (from the import parameters)").set_input_files(
        str(folder / "ImportToken.bin")
    )
    page.get_by_test_id("upload").click()


def _state(tenant: Tenant) -> str:
    tenant.refresh_from_db()
    return tenant.state


def _wait_for_state(tenant: Tenant, state: str, timeout: float = 90) -> float:
    deadline = time.monotonic() + timeout
    while _state(tenant) != state:
        assert time.monotonic() < deadline, f"still {tenant.state}, not {state}"
        time.sleep(0.1)
    return time.monotonic()


def test_the_walkthrough_needs_no_reload_and_no_typed_url(
    page: Page, sign_in: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(30)))
    for n in range(12):
        object_put(tenant=acme.tenant, key=f"reports/{n:02}.txt", chunks=[bytes(1000 + n)])
    with celery_worker(tmp_path / "worker.log") as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.owner.username, PASSWORD)
        page.get_by_role("link", name="Keys", exact=True).click()
        expect(page.get_by_test_id("revocation-bound")).to_contain_text("vendor-managed key")
        page.get_by_test_id("bring-upload").click()
        _upload_in_browser(page, tmp_path / "one")
        expect(page.get_by_test_id("checks")).not_to_contain_text("Failed")

        # Enable: the page follows the move to its end without a reload.
        page.get_by_test_id("enable").click()
        expect(page.get_by_test_id("state-banner")).to_contain_text("Moving your data")
        expect(page.get_by_test_id("state-badge")).to_have_text(
            "Protected by your key", timeout=90_000
        )
        expect(page.get_by_test_id("state-banner")).to_have_count(0)
        expect(page.get_by_test_id("move-finished")).to_contain_text("Moved under your key")
        expect(page.get_by_test_id("move-finished")).to_contain_text(
            "12 objects moved, 12 verified"
        )
        expect(page.get_by_test_id("dek-table")).to_contain_text("upload-1")
        expect(page.get_by_test_id("revocation-bound")).to_contain_text("in your key store")

        # A new version of the uploaded key: one click from the Keys page, warned first.
        expect(page.get_by_test_id("upload-pause-warning")).to_be_visible()
        page.get_by_test_id("upload-new-version").click()
        expect(page.get_by_test_id("upload-rotation-warning")).to_contain_text("new writes pause")
        _upload_in_browser(page, tmp_path / "two")
        expect(page.get_by_test_id("pending-version")).to_contain_text("upload-2")
        expect(page.get_by_test_id("state-banner")).to_contain_text(
            "An administrator uploaded a new key in Keyward"
        )
        page.get_by_test_id("banner-link").click()
        page.get_by_role("button", name="Confirm").first.click()
        done = _wait_for_state(acme.tenant, ServiceState.BYOK_ACTIVE)
        expect(page.get_by_test_id("state-banner")).to_have_count(0, timeout=5_000)
        assert time.monotonic() - done <= 3.0, "the banner outlived the rewrap"

        # Revoke: the actions go, the key's versions read revoked, Restore is offered.
        page.get_by_role("link", name="Keys", exact=True).click()
        page.get_by_label("Type").fill("acme")
        page.get_by_test_id("revoke").click()
        expect(page.get_by_test_id("state-badge")).to_have_text("Revoked")
        for gone in ("revoke", "rotate-dek", "reencrypt", "remove-byok", "upload-pause-warning"):
            expect(page.get_by_test_id(gone)).to_have_count(0)
        expect(page.get_by_test_id("kek-state").first).to_have_text("Revoked")
        expect(page.get_by_test_id("restore")).to_be_visible()

        # Restore: the same key again, reached from the Keys page, then Restore.
        page.get_by_test_id("upload-new-version").click()
        expect(page.get_by_test_id("upload-restore-path")).to_be_visible()
        expect(page.get_by_test_id("checks")).to_have_count(0)  # no check of a destroyed copy
        _upload_in_browser(page, tmp_path / "again", same_key_from=tmp_path / "two")
        page.get_by_role("link", name="Keys page").click()
        page.get_by_test_id("restore").click()
        expect(page.get_by_test_id("state-badge")).to_have_text("Protected by your key")
        expect(page.get_by_test_id("state-banner")).to_have_count(0)
    assert _state(acme.tenant) == ServiceState.BYOK_ACTIVE


def _enable_elsewhere(acme: Any) -> None:
    """Another administrator enables the customer's key: the state moves on."""
    tenant_transition(
        tenant=acme.tenant,
        to=ServiceState.MIGRATING,
        actor=Actor.for_user(acme.key_admin),
        action="byok.enable",
    )


def _open_audit_trail(page: Page, sign_in: Any) -> Any:
    """A new tenant's owner, signed in, on the audit trail page."""
    acme = make_tenant("Acme", "acme")
    sign_in(acme.owner.username, PASSWORD)
    page.get_by_role("link", name="Audit trail", exact=True).click()
    return acme


def test_a_change_made_elsewhere_reaches_an_open_page(
    page: Page, sign_in: Any, tmp_path: Path
) -> None:
    """Another administrator (here: the database) changes the state; the open
    page follows within the slow pace (2 s), with no action in this browser."""
    acme = make_tenant("Acme", "acme")
    sign_in(acme.owner.username, PASSWORD)
    page.get_by_role("link", name="Keys", exact=True).click()
    expect(page.get_by_test_id("state-badge")).to_have_text("Vendor-managed key")
    _enable_elsewhere(acme)
    changed = time.monotonic()
    expect(page.get_by_test_id("state-badge")).to_have_text("Moving to your key", timeout=8_000)
    assert time.monotonic() - changed <= 3.5  # the slow pace is 2 s
    expect(page.get_by_test_id("state-banner")).to_contain_text("Moving your data")
    expect(page.get_by_test_id("rotate-dek")).to_have_count(0)


def test_a_form_being_filled_in_is_not_wiped_by_a_change_made_elsewhere(
    page: Page, sign_in: Any, tmp_path: Path
) -> None:
    """A file chosen in the upload form survives a change of the tenant: the live
    refresh waits rather than re-render the form under the person's hands."""
    acme = make_tenant("Acme", "acme")
    sign_in(acme.owner.username, PASSWORD)
    page.get_by_role("link", name="Keys", exact=True).click()
    page.get_by_test_id("bring-upload").click()
    chosen = tmp_path / "CustomerEncryptionKey.bin"
    chosen.write_bytes(b"\x01" * 512)
    field = page.get_by_label("CustomerEncryptionKey.bin (your wrapped key)")
    field.set_input_files(str(chosen))
    with page.expect_request(lambda r: "/live" in r.url, timeout=8_000):
        tenant_transition(
            tenant=acme.tenant,
            to=ServiceState.MIGRATING,
            actor=Actor.for_user(acme.key_admin),
            action="byok.enable",
        )
    page.wait_for_timeout(3_000)  # past the next polls, which saw the change
    assert field.evaluate("input => input.files.length") == 1
    # With nothing chosen, the page follows the next change: the form is new.
    field.set_input_files([])
    field.evaluate("input => { input.dataset.seen = 'before'; input.blur(); }")
    tenant_transition(
        tenant=acme.tenant,
        to=ServiceState.BYOK_ACTIVE,
        actor=Actor.system("tests"),
        action="byok.enabled",
    )
    expect(page.locator("input[data-seen=before]")).to_have_count(0, timeout=8_000)
    expect(field).to_have_count(1)


def test_the_audit_trail_page_follows_a_change_and_keeps_its_table(
    page: Page, sign_in: Any
) -> None:
    """Every recorded event changes the tenant's fingerprint: the open audit page is
    fetched again whole (its live region), never replaced by the table's partial."""
    acme = _open_audit_trail(page, sign_in)
    expect(page.get_by_test_id("audit-row").first).to_be_visible()
    _enable_elsewhere(acme)
    expect(page.get_by_test_id("state-banner")).to_contain_text("Moving your data", timeout=8_000)
    expect(page.get_by_test_id("audit-row").filter(has_text="byok.enable")).to_have_count(1)
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    expect(page.get_by_test_id("export-csv")).to_be_visible()


def test_a_filtered_audit_trail_stays_filtered_when_the_tenant_changes(
    page: Page, sign_in: Any
) -> None:
    """The filter swaps the table and pushes its address; a change made elsewhere
    then refreshes that address (not the one first loaded), and the applied
    filter does not count as a form being filled in."""
    acme = _open_audit_trail(page, sign_in)
    page.get_by_label("Action").fill("membership.add")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**action=membership.add**")
    rows = page.get_by_test_id("audit-row")
    expect(rows.first).to_contain_text("membership.add")
    shown = rows.count()
    page.locator("body").click()  # the field is no longer in focus
    _enable_elsewhere(acme)
    expect(page.get_by_test_id("state-banner")).to_contain_text("Moving your data", timeout=8_000)
    expect(rows).to_have_count(shown)
    expect(rows.filter(has_text="byok.enable")).to_have_count(0)
    expect(page.get_by_label("Action")).to_have_value("membership.add")
    assert "action=membership.add" in page.url
    assert page.locator("#results").count() == 1
