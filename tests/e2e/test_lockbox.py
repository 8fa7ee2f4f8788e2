"""In the browser: support asks, the owner approves, support reads, the owner ends it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from objects import keyring, locations
from objects.services import object_put
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import AccessRequest, SupportAccess, Tenant
from tests.conftest import PASSWORD, make_tenant
from tests.e2e.conftest import sign_in_with_code, staff_with_authenticator

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _objects(settings: Any, tmp_path: Path) -> None:
    settings.KEYWARD_OBJECT_ROOT = tmp_path / "objects"
    locations.forget()
    keyring.forget()


def signed_in(browser: Browser, live_server: Any, email: str, secret: str) -> Page:
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(15_000)
    return sign_in_with_code(context.new_page(), live_server.url, email, secret)


def test_support_reads_only_while_the_owner_allows_it(
    page: Page, sign_in: Any, browser: Browser, live_server: Any
) -> None:
    acme = make_tenant("Acme", "acme")
    secret = staff_with_authenticator("support@vendor.test")
    rows = records_create(tenant=acme.tenant, items=list(synthetic_records(2)))
    object_put(tenant=acme.tenant, key="exports/r.csv", chunks=[b"x,y\n"], content_type="text/csv")

    support = signed_in(browser, live_server, "support@vendor.test", secret)
    try:
        support.goto(f"{live_server.url}/support/t/acme/data/")
        expect(support.get_by_test_id("access-refused")).to_contain_text("no open grant")
        support.get_by_role("link", name="Ask for access").click()
        support.get_by_label("Reason").select_option("customer_case")
        support.get_by_label("Case reference").fill("CASE-9")
        support.get_by_label("Why you need the data").fill("Records look duplicated.")
        support.get_by_label("Read records").check()
        support.get_by_label("Download objects").check()
        support.get_by_label("For how many hours").fill("2")
        support.get_by_role("button", name="Send request").click()
        expect(support.get_by_role("status")).to_contain_text("Request sent")

        # The owner sees the banner, and approves on the Access page.
        sign_in(acme.owner.username, PASSWORD)
        expect(page.get_by_test_id("support-access-banner")).to_contain_text(
            "Vendor support asks to read your data"
        )
        page.get_by_role("link", name="Open the Access page").click()
        row = page.get_by_test_id("access-requests").get_by_role("row").filter(has_text="CASE-9")
        row.get_by_label("Comment").fill("Go ahead for this case")
        row.get_by_test_id("approve").click()
        expect(page.get_by_role("status")).to_contain_text("Access granted to support@vendor.test")

        # Support reads a record and downloads an object.
        support.goto(f"{live_server.url}/support/t/acme/data/")
        expect(support.get_by_test_id("support-records")).to_contain_text(str(rows[0].uid))
        with support.expect_download() as download:
            support.get_by_role("link", name="exports/r.csv").click()
        assert Path(download.value.path()).read_bytes() == b"x,y\n"

        # The owner sees each read in the trail, then ends the grant.
        page.goto(f"{live_server.url}/t/acme/audit/")
        for read in ("access.read_records", "access.read_object"):
            done = page.get_by_role("row").filter(has_text=read).filter(has_text="success")
            expect(done).to_have_count(1)
            expect(done).to_contain_text("support@vendor.test")
        page.goto(f"{live_server.url}/t/acme/access/")
        page.get_by_test_id("end-access").click()
        expect(page.get_by_role("status")).to_contain_text("access ended now")

        support.reload()
        expect(support.get_by_test_id("access-refused")).to_contain_text("no open grant")

        # A grant whose window is over: the next read is refused.
        AccessRequest.objects.all().delete()
        support.goto(f"{live_server.url}/support/t/acme/access/request/")
        support.get_by_label("Reason").select_option("incident")
        support.get_by_label("Case reference").fill("INC-1")
        support.get_by_label("Why you need the data").fill("Outage review.")
        support.get_by_label("Read records").check()
        support.get_by_label("For how many hours").fill("1")
        support.get_by_role("button", name="Send request").click()
        page.goto(f"{live_server.url}/t/acme/access/")
        page.get_by_test_id("approve").click()
        support.goto(f"{live_server.url}/support/t/acme/data/")
        expect(support.get_by_test_id("grant-window")).to_contain_text("INC-1")
        AccessRequest.objects.update(ends_at=timezone.now())
        support.reload()
        expect(support.get_by_test_id("access-refused")).to_contain_text("no open grant")

        # A tenant that never allows access: no form, and a refusal.
        page.goto(f"{live_server.url}/t/acme/access/")
        page.get_by_label("Vendor support may read our data").select_option(SupportAccess.NEVER)
        page.get_by_role("button", name="Save rules").click()
        expect(page.get_by_role("status")).to_contain_text("settings saved")
        assert Tenant.objects.get(slug="acme").support_access == SupportAccess.NEVER
        support.goto(f"{live_server.url}/support/t/acme/access/request/")
        expect(support.get_by_test_id("never-allowed")).to_be_visible()
    finally:
        support.context.close()
