"""Without the BYOK add-on: the pages explain it and offer to request it; the services refuse."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent, Outcome
from audit.services import Actor
from keys.errors import KeyActionRefused
from keys.models import KeyImport, KeySource, SourceKind, SourceState
from keys.services.addon import ADDON_REFUSAL
from keys.services.sources import byok_enable, key_source_register, key_source_test
from keys.services.uploads import key_import_create, key_upload
from tenants.models import Tenant
from tests.conftest import TenantUsers, login

SYSTEM = Actor.system("tests")
BRING_PAGES = ("keys:aws", "keys:azure", "keys:kmip", "keys:upload")


@pytest.fixture
def plain(acme: TenantUsers) -> TenantUsers:
    """Acme without the add-on."""
    Tenant.objects.filter(pk=acme.tenant.pk).update(byok_addon=False)
    acme.tenant.refresh_from_db()
    return acme


@pytest.mark.parametrize("page", BRING_PAGES)
def test_bring_your_own_key_pages_explain_the_addon(plain: TenantUsers, page: str) -> None:
    response = login(plain.key_admin).get(reverse(page, args=["acme"]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "a licensed add-on" in body
    assert 'data-testid="request-addon"' in body
    assert "Save and Test" not in body


def test_keys_page_offers_the_request_instead_of_the_ways_to_bring_a_key(
    plain: TenantUsers,
) -> None:
    body = login(plain.owner).get(reverse("keys:overview", args=["acme"])).content.decode()
    assert "Request the add-on" in body
    assert 'data-testid="bring-aws"' not in body


def test_with_the_addon_the_pages_are_as_before(acme: TenantUsers) -> None:
    body = login(acme.owner).get(reverse("keys:overview", args=["acme"])).content.decode()
    assert 'data-testid="bring-aws"' in body
    assert "Request the add-on" not in body


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("keys:aws_save_and_test", {"key_arn": "arn:aws:kms:eu-west-1:111122223333:key/x"}),
        ("keys:import_parameters", {}),
    ],
)
def test_bring_actions_are_refused_and_recorded(plain: TenantUsers, name: str, data: Any) -> None:
    response = login(plain.key_admin, sudo=True).post(reverse(name, args=["acme"]), data)
    assert response.status_code == 302
    assert response["Location"] == reverse("keys:overview", args=["acme"])
    assert not KeySource.objects.filter(tenant=plain.tenant).exclude(kind=SourceKind.LOCAL).exists()
    assert not KeyImport.objects.filter(tenant=plain.tenant).exists()
    event = AuditEvent.objects.filter(tenant=plain.tenant).order_by("-seq").first()
    assert event is not None and event.outcome == Outcome.FAILURE
    assert event.reason == ADDON_REFUSAL


def test_services_refuse_without_the_addon(plain: TenantUsers) -> None:
    tenant = plain.tenant
    with pytest.raises(KeyActionRefused, match="licensed add-on"):
        key_source_register(
            tenant=tenant, kind=SourceKind.AWS_KMS, config={"key_arn": "x"}, actor=SYSTEM
        )
    # A registration made while the tenant had the add-on can be neither tested nor enabled.
    source = KeySource.objects.create(
        tenant=tenant, kind=SourceKind.AWS_KMS, state=SourceState.TESTED, config={"key_arn": "x"}
    )
    with pytest.raises(KeyActionRefused, match="licensed add-on"):
        key_source_test(source=source, actor=SYSTEM)
    with pytest.raises(KeyActionRefused, match="licensed add-on"):
        byok_enable(tenant=tenant, source=source, actor=SYSTEM)
    with pytest.raises(KeyActionRefused, match="licensed add-on"):
        key_import_create(tenant=tenant, actor=SYSTEM)
    with pytest.raises(KeyActionRefused, match="licensed add-on"):
        key_upload(
            tenant=tenant,
            wrapped_key=b"x" * 512,
            token=b"t",
            material_expires_at=None,
            actor=SYSTEM,
        )
    source.refresh_from_db()
    assert source.state == SourceState.TESTED and source.test_results == []
    tenant.refresh_from_db()
    assert tenant.state == "vendor_managed"


def test_request_the_addon_emails_support_and_is_audited(
    plain: TenantUsers, mailoutbox, settings, django_capture_on_commit_callbacks
) -> None:
    settings.KEYWARD_SUPPORT_EMAIL = "help@vendor.test"
    with django_capture_on_commit_callbacks(execute=True):
        response = login(plain.key_admin).post(
            reverse("keys:request_addon", args=["acme"]), follow=True
        )
    assert "Your request for the BYOK add-on went to the vendor" in response.content.decode()
    assert [m.to for m in mailoutbox] == [["help@vendor.test"]]
    assert "Acme (acme) asks for the BYOK add-on" in mailoutbox[0].subject
    event = AuditEvent.objects.filter(tenant=plain.tenant, action="addon.request").get()
    assert event.actor_display.startswith(plain.key_admin.email)
    plain.tenant.refresh_from_db()
    assert plain.tenant.byok_addon is False  # asking is not getting


def test_request_refused_when_the_tenant_has_the_addon(
    acme: TenantUsers, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = login(acme.owner).post(reverse("keys:request_addon", args=["acme"]), follow=True)
    assert "has the BYOK add-on already" in response.content.decode()
    assert mailoutbox == []
    event = AuditEvent.objects.filter(tenant=acme.tenant, action="addon.request").get()
    assert event.outcome == Outcome.FAILURE


def test_request_needs_a_key_manager_and_post(plain: TenantUsers, mailoutbox) -> None:
    url = reverse("keys:request_addon", args=["acme"])
    assert login(plain.viewer).post(url).status_code == 403
    assert login(plain.auditor).post(url).status_code == 403
    assert login(plain.owner).get(url).status_code == 405
    assert mailoutbox == []
