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
from tests.conftest import PASSWORD, make_tenant
from tests.keys.test_health import enable_aws
from tests.support.aws import aws_endpoint, boto_client, create_kms_key
from tests.support.worker import celery_worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CUSTOMER = "111122223333"


@pytest.fixture
def aws_tenant(settings: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "999988887777",
        "AWS_SECRET_ACCESS_KEY": "vendor-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "KEYWARD_AWS_ENDPOINT_URL": aws_endpoint(),
    }.items():
        monkeypatch.setenv(name, value)
    settings.KEYWARD_AWS_ENDPOINT_URL = aws_endpoint()
    reset_for_tests()
    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(20)))
    kms = boto_client("kms", CUSTOMER)
    key_arn = create_kms_key(CUSTOMER, "eu-west-1")
    alias = f"alias/keyward-e2e-{acme.tenant.pk.hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_arn.rsplit("/", 1)[1])
    enable_aws(acme.tenant, f"arn:aws:kms:eu-west-1:{CUSTOMER}:{alias}")
    return {"acme": acme, "kms": kms, "alias": alias}


def test_rotation_confirm_revoke_restore_destroy_cancel(
    page: Page, sign_in: Any, aws_tenant: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    acme, kms = aws_tenant["acme"], aws_tenant["kms"]
    new_key = create_kms_key(CUSTOMER, "eu-west-1")
    kms.update_alias(AliasName=aws_tenant["alias"], TargetKeyId=new_key.rsplit("/", 1)[1])
    assert key_health_check(tenant=acme.tenant) == "rotation_pending"

    with celery_worker(tmp_path / "worker.log") as worker:
        monkeypatch.setitem(celery_app.conf, "task_default_queue", worker.queue)
        sign_in(acme.owner.username, PASSWORD)
        banner = page.get_by_test_id("state-banner")
        expect(banner).to_contain_text("Service paused: a key rotation needs your confirmation")
        page.get_by_role("link", name="Audit trail", exact=True).click()
        expect(banner).to_be_visible()  # on every page of the tenant
        banner.get_by_role("link", name="Review and confirm").click()
        expect(page.get_by_test_id("new-version")).to_have_text(new_key)
        page.get_by_test_id("confirm-rotation").click()
        expect(page.get_by_role("status")).to_contain_text("Confirmed")
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=enable-progress]')", timeout=60_000
        )
        page.reload()
        expect(page.get_by_test_id("state-banner")).to_have_count(0)

        page.get_by_label("Type the tenant's identifier, acme, to confirm.").fill("nope")
        page.get_by_test_id("revoke").click()
        expect(page.get_by_role("status")).to_contain_text("Type the tenant's identifier")
        page.get_by_label("Type the tenant's identifier, acme, to confirm.").fill("acme")
        page.get_by_test_id("revoke").click()
        expect(page.get_by_test_id("state-banner")).to_contain_text(
            "Key revoked: your data is unreadable"
        )

        page.get_by_test_id("restore").click()
        expect(page.get_by_role("status")).to_contain_text("Restored")
        expect(page.get_by_test_id("state-banner")).to_have_count(0)

        page.get_by_label("Type the tenant's identifier, acme, to confirm.").fill("acme")
        page.get_by_test_id("revoke").click()
        page.get_by_label("Type the tenant's identifier, acme, to confirm.").fill("acme")
        page.get_by_test_id("destroy").click()
        expect(page.get_by_test_id("destroy-scheduled")).to_contain_text("will be destroyed on")
        page.get_by_test_id("cancel-destroy").click()
        expect(page.get_by_role("status")).to_contain_text("The destruction was cancelled.")
        expect(page.get_by_test_id("destroy-scheduled")).to_have_count(0)
