from __future__ import annotations

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
from tests.support.aws import aws_endpoint, boto_client, create_kms_key
from tests.support.worker import celery_worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CUSTOMER = "111122223333"
VENDOR = "999988887777"


def test_disabled_key_fails_then_passes_then_enable_with_progress(
    page: Page, sign_in: Any, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": VENDOR,
        "AWS_SECRET_ACCESS_KEY": "vendor-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "KEYWARD_AWS_ENDPOINT_URL": aws_endpoint(),
    }.items():
        monkeypatch.setenv(name, value)
    settings.KEYWARD_AWS_ENDPOINT_URL = aws_endpoint()
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(50)))
    key_arn = create_kms_key(CUSTOMER, "eu-west-1")
    kms = boto_client("kms", CUSTOMER)
    kms.disable_key(KeyId=key_arn)

    with celery_worker(tmp_path / "worker.log") as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.key_admin.username, PASSWORD)
        page.get_by_role("link", name="Keys", exact=True).click()
        page.get_by_test_id("bring-aws").click()
        expect(page.get_by_test_id("key-policy")).to_contain_text(str(acme.tenant.pk))

        page.get_by_label("Key ARN or alias ARN").fill(key_arn)
        page.get_by_test_id("save-and-test").click()
        checks = page.get_by_test_id("checks")
        expect(checks).to_contain_text("Failed: Key enabled")
        expect(checks).to_contain_text("enable the key in the AWS KMS console")
        expect(page.get_by_test_id("enable")).to_be_disabled()

        kms.enable_key(KeyId=key_arn)
        page.get_by_test_id("save-and-test").click()
        expect(page.get_by_role("status")).to_contain_text("Every check passed.")
        expect(checks).not_to_contain_text("Failed")

        page.get_by_test_id("enable").click()
        expect(page.get_by_role("status")).to_contain_text("Moving your data keys under your key")
        expect(page.locator("#enable-progress")).to_contain_text("Moving data keys under your key")
        # The progress partial polls until the tenant is active, then stops.
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=enable-progress]')", timeout=60_000
        )
        page.reload()
        expect(page.get_by_test_id("protection-mode")).to_have_text("AWS KMS key")
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
