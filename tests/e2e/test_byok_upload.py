from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from console.celery import app as celery_app
from keys.runtime import reset_for_tests
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import PASSWORD, make_tenant
from tests.keys.test_upload import customer_wraps
from tests.support.worker import celery_worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_download_wrap_upload_compare_kcv_and_enable(
    page: Page, sign_in: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(40)))
    with celery_worker(tmp_path / "worker.log") as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.owner.username, PASSWORD)
        page.get_by_role("link", name="Keys", exact=True).click()
        page.get_by_test_id("bring-upload").click()

        with page.expect_download() as info:
            page.get_by_test_id("download-parameters").click()
        folder = tmp_path / "customer"
        with zipfile.ZipFile(info.value.path()) as bundle:
            bundle.extractall(folder)
        kcv = customer_wraps(folder)  # the README's openssl commands, as the customer runs them

        page.get_by_label("CustomerEncryptionKey.bin (your wrapped key)").set_input_files(
            str(folder / "CustomerEncryptionKey.bin")
        )
        page.get_by_label("ImportToken.bin (from the import parameters)").set_input_files(
            str(folder / "ImportToken.bin")
        )
        page.get_by_test_id("upload").click()
        expect(page.get_by_role("status")).to_contain_text(f"Its key check value is {kcv}")
        expect(page.get_by_test_id("kcv")).to_have_text(kcv)
        expect(page.get_by_test_id("checks")).not_to_contain_text("Failed")

        page.get_by_test_id("enable").click()
        expect(page.get_by_role("status")).to_contain_text("Moving your data keys under your key")
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=enable-progress]')", timeout=60_000
        )
        page.reload()
        expect(page.get_by_test_id("protection-mode")).to_have_text("Uploaded key")

        # Uploading the same token again is refused with a clear message.
        page.goto(page.url.replace("/keys/", "/keys/upload/"))
        page.get_by_label("CustomerEncryptionKey.bin (your wrapped key)").set_input_files(
            str(folder / "CustomerEncryptionKey.bin")
        )
        page.get_by_label("ImportToken.bin (from the import parameters)").set_input_files(
            str(folder / "ImportToken.bin")
        )
        page.get_by_test_id("upload").click()
        expect(page.get_by_test_id("upload-error")).to_contain_text("used already")
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
