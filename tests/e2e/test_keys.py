from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from console.celery import app as celery_app
from keys.models import DataKey, DekState
from keys.runtime import reset_for_tests
from records.services import records_create
from records.synthetic import synthetic_records
from tests.conftest import PASSWORD, make_tenant
from tests.support.worker import celery_worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_rotate_then_reencrypt_with_progress(
    page: Page, sign_in: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(600)))
    with celery_worker(tmp_path / "worker.log", {"KEYWARD_REENCRYPT_BATCH": "100"}) as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.key_admin.username, PASSWORD)
        page.get_by_role("link", name="Keys", exact=True).click()
        expect(page.get_by_test_id("protection-mode")).to_have_text("Vendor-managed key")
        expect(page.get_by_test_id("revocation-bound")).to_contain_text(
            "the key cache lifetime (5 minutes)"
        )

        page.get_by_test_id("rotate-dek").click()
        expect(page.get_by_role("status")).to_contain_text("New data key v2 is in use")
        table = page.get_by_test_id("dek-table")
        expect(table).to_contain_text("Decrypt only")
        expect(page.get_by_text("600 records still depend on older data keys")).to_be_visible()

        page.get_by_test_id("reencrypt").click()
        expect(page.get_by_role("status")).to_contain_text("Re-encrypting 600 record(s)")
        # htmx polls the progress partial until the job is done.
        expect(page.locator("#reencrypt-progress")).to_contain_text(
            "Re-encryption done: 600 of 600 records", timeout=60_000
        )
        page.reload()
        expect(page.get_by_text("0 records still depend on older data keys")).to_be_visible()
        expect(table).to_contain_text("Retired")
    assert DataKey.objects.get(tenant=acme.tenant, version=1).state == DekState.RETIRED
