from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from audit.models import StreamDestination
from audit.streaming.delivery import stream_deliver
from tests.conftest import PASSWORD, make_tenant
from tests.servers.siem import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_owner_streams_the_trail_to_a_webhook_and_sees_the_secret_once(
    page: Page, sign_in: Any, settings: Any, tmp_path: Path
) -> None:
    settings.KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    acme = make_tenant("Acme", "acme")
    sign_in(acme.owner.username, PASSWORD)
    page.get_by_role("link", name="Audit trail", exact=True).click()
    page.get_by_test_id("stream-link").click()
    expect(page.get_by_test_id("stream-none")).to_be_visible()

    with WebhookReceiver(tmp_path / "webhook") as receiver:
        page.get_by_label("HTTPS webhook").check()
        page.get_by_label("Webhook URL").fill("http://127.0.0.1/in")
        page.get_by_test_id("stream-save").click()
        expect(page.get_by_test_id("url-error")).to_contain_text("must be an https://")

        page.get_by_label("Webhook URL").fill(receiver.url)
        page.get_by_label("CA certificates (PEM, optional)").fill(receiver.certs.ca_pem)
        page.get_by_test_id("stream-save").click()
        secret = page.get_by_test_id("secret-value").inner_text()
        assert secret.startswith("kwhs_")
        expect(page.get_by_test_id("stream-state")).to_contain_text("Active")

        page.reload()
        expect(page.get_by_test_id("stream-secret")).to_have_count(0)
        assert secret not in page.content()

        receiver.secret = secret.encode()
        destination = StreamDestination.objects.get(tenant=acme.tenant)
        assert stream_deliver(str(destination.pk)) > 0
        assert receiver.deliveries and all(d.verified for d in receiver.deliveries)
        actions = [e["action"] for e in receiver.events()]
        assert "audit.stream_configure" in actions
        page.reload()
        expect(page.get_by_test_id("stream-status")).to_contain_text("0 waiting")
