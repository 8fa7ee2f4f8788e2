"""Confirm a detected rotation, revoke, restore: against LocalStack and uploaded keys."""

from __future__ import annotations

import html
import re
import socket
from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from crypto.envelope import KeyRevoked
from keys.errors import KeyActionRefused
from keys.models import DataKey, KekState, KekVersion, KeySource, SourceKind
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from keys.services.lifecycle import tenant_revoke
from keys.services.rotation import kek_rewrap_run
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.confirmation import confirmation_prompt
from tenants.models import ServiceState, Tenant
from tenants.states import ServicePaused
from tests.conftest import login
from tests.keys.test_aws_source import CUSTOMER_ACCOUNT, _aws  # noqa: F401  (autouse)
from tests.support.aws import create_kms_key


def state(tenant: Tenant) -> str:
    tenant.refresh_from_db()
    return tenant.state


def move_alias(byok: Any) -> str:
    new_key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    byok["kms"].update_alias(AliasName=byok["alias"], TargetKeyId=new_key.rsplit("/", 1)[1])
    assert key_health_check(tenant=byok["acme"].tenant) == "rotation_pending"
    return new_key


def source_of(tenant: Tenant) -> KeySource:
    return KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS)


def test_detected_rotation_pauses_writes_then_confirm_rewraps_and_resumes(byok) -> None:
    acme = byok["acme"]
    tenant = acme.tenant
    new_key = move_alias(byok)
    with pytest.raises(ServicePaused, match="paused"):
        records_create(tenant=tenant, items=list(synthetic_records(1, prefix="late-")))
    assert record_fields(tenant, byok["records"][0])  # reads keep working
    client = login(acme.key_admin, sudo=True)
    body = client.get("/t/acme/").content.decode()
    assert 'data-testid="banner-link"' in body
    review = client.get(reverse("keys:rotation", args=["acme"])).content.decode()
    assert new_key in review

    response = client.post(reverse("keys:rotation_confirm", args=["acme"]), follow=True)
    assert "Confirmed: your data keys are being rewrapped" in response.content.decode()
    assert state(tenant) == ServiceState.REWRAPPING
    assert kek_rewrap_run(source_id=str(source_of(tenant).pk)) == "done"
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    versions = set(
        DataKey.objects.filter(tenant=tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    )
    assert versions == {new_key}
    old = KekVersion.objects.get(provider_version=byok["key_arn"])
    assert old.state == KekState.RETIRED
    reset_for_tests()
    assert record_fields(tenant, byok["records"][0])
    again = client.post(reverse("keys:rotation_confirm", args=["acme"]), follow=True)
    assert "Confirming or rejecting a key rotation is not available while the tenant" in (
        again.content.decode()
    )
    history = client.get(reverse("keys:rotation", args=["acme"])).content.decode()
    assert "kek.rotation_done" in history and "key.rotation_detected" in history


def test_confirming_while_the_key_store_is_unreachable_is_refused(byok, settings) -> None:
    acme = byok["acme"]
    move_alias(byok)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{closed}"
    response = login(acme.owner, sudo=True).post(
        reverse("keys:rotation_confirm", args=["acme"]), follow=True
    )
    assert "did not pass its checks" in html.unescape(response.content.decode())
    assert state(acme.tenant) == ServiceState.ROTATION_PENDING
    failure = AuditEvent.objects.filter(action="kek.confirm_rotation", outcome="failure")
    assert failure.exists()


def test_not_ours_keeps_the_tenant_paused(byok) -> None:
    acme = byok["acme"]
    move_alias(byok)
    response = login(acme.owner, sudo=True).post(
        reverse("keys:rotation_reject", args=["acme"]), follow=True
    )
    assert "CloudTrail" in html.unescape(response.content.decode())
    assert state(acme.tenant) == ServiceState.ROTATION_PENDING
    assert AuditEvent.objects.filter(action="kek.reject_rotation", outcome="denied").exists()


def test_revoking_during_a_rewrap_stops_it_cleanly(byok) -> None:
    acme = byok["acme"]
    tenant = acme.tenant
    new_key = move_alias(byok)
    login(acme.owner, sudo=True).post(reverse("keys:rotation_confirm", args=["acme"]))
    tenant_revoke(tenant=tenant, actor=_actor(acme), confirm="acme")
    assert kek_rewrap_run(source_id=str(source_of(tenant).pk)) == "stopped"
    assert state(tenant) == ServiceState.REVOKED
    for dek in DataKey.objects.filter(tenant=tenant).select_related("kek_version"):
        assert dek.kek_version.provider_version in (byok["key_arn"], new_key)


def _actor(acme: Any) -> Any:
    from audit.services import Actor

    return Actor.for_user(acme.owner)


def test_revoke_needs_the_typed_name_then_nothing_decrypts_then_restore(
    byok, django_capture_on_commit_callbacks
) -> None:
    acme = byok["acme"]
    tenant = acme.tenant
    client = login(acme.owner, sudo=True)
    wrong = client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acne"}, follow=True)
    assert "Type the tenant's identifier, acme, to confirm." in html.unescape(
        wrong.content.decode()
    )
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acme"})
    assert state(tenant) == ServiceState.REVOKED
    reset_for_tests()
    with pytest.raises(KeyRevoked):
        record_fields(tenant, byok["records"][0])
    assert "Key revoked: your data is unreadable" in client.get("/t/acme/").content.decode()

    byok["kms"].disable_key(KeyId=byok["key_arn"])
    refused = client.post(reverse("keys:restore", args=["acme"]), follow=True).content.decode()
    assert "The key is not usable yet" in refused
    assert state(tenant) == ServiceState.REVOKED
    byok["kms"].enable_key(KeyId=byok["key_arn"])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("keys:restore", args=["acme"]))
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    reset_for_tests()
    assert record_fields(tenant, byok["records"][0])


def _label(page: str, field: str) -> str:
    """The text of the label of the input `field`, as a person reads it."""
    found = re.search(rf'<label for="{field}">(.*?)</label>', page, re.S)
    assert found, f"no label for {field}"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1)))


def test_revoke_and_destroy_ask_for_the_same_word_the_tenants_identifier(byok) -> None:
    acme = byok["acme"]
    tenant = acme.tenant
    prompt = "Type the tenant's identifier, acme, to confirm."
    assert confirmation_prompt(tenant) == prompt
    client = login(acme.owner, sudo=True)
    keys = reverse("keys:overview", args=["acme"])
    assert _label(client.get(keys).content.decode(), "revoke-confirm") == prompt
    for wrong in ("Acme", "", "acme!"):
        page = client.post(reverse("keys:revoke", args=["acme"]), {"confirm": wrong}, follow=True)
        assert prompt in html.unescape(page.content.decode())
        assert state(tenant) == ServiceState.BYOK_ACTIVE
    client.post(reverse("keys:revoke", args=["acme"]), {"confirm": " acme "})
    assert state(tenant) == ServiceState.REVOKED

    assert _label(client.get(keys).content.decode(), "destroy-confirm") == prompt
    for wrong in ("Acme", ""):
        page = client.post(reverse("keys:destroy", args=["acme"]), {"confirm": wrong}, follow=True)
        assert prompt in html.unescape(page.content.decode())
        assert Tenant.objects.get(pk=tenant.pk).destroy_after is None
    client.post(reverse("keys:destroy", args=["acme"]), {"confirm": "acme"})
    assert Tenant.objects.get(pk=tenant.pk).destroy_after is not None


@pytest.mark.parametrize(
    "name", ["keys:rotation_confirm", "keys:rotation_reject", "keys:revoke", "keys:restore"]
)
def test_lifecycle_actions_are_guarded(acme, globex, name) -> None:
    for role in ("auditor", "viewer"):
        assert (
            login(getattr(acme, role), sudo=True).post(reverse(name, args=["acme"])).status_code
            == 403
        )
    assert login(globex.owner, sudo=True).post(reverse(name, args=["acme"])).status_code == 404
    assert login(acme.owner, sudo=True).get(reverse(name, args=["acme"])).status_code == 405
    response = login(acme.key_admin).post(reverse(name, args=["acme"]))
    assert response["Location"].startswith(reverse("console:sudo"))


def test_a_vendor_managed_tenant_has_nothing_to_revoke(acme) -> None:
    with pytest.raises(KeyActionRefused, match="does not use a key of its own"):
        tenant_revoke(tenant=acme.tenant, actor=_actor(acme), confirm="acme")


def test_rotate_key_material_now_keeps_old_data_readable(byok) -> None:
    acme = byok["acme"]
    client = login(acme.key_admin, sudo=True)
    page = client.get(reverse("keys:overview", args=["acme"])).content.decode()
    assert 'data-testid="rotate-kek"' in page
    response = client.post(reverse("keys:rotate_kek", args=["acme"]), follow=True)
    assert "New key material was made in your key store" in html.unescape(response.content.decode())
    event = AuditEvent.objects.get(tenant=acme.tenant, action="kek.rotate_now")
    assert event.outcome == "success"
    assert key_health_check(tenant=acme.tenant) == "ok"  # our own rotation does not pause
    reset_for_tests()
    assert record_fields(acme.tenant, byok["records"][0])


def test_switching_to_a_new_key_arn_rewraps_under_it(byok) -> None:
    acme = byok["acme"]
    tenant = acme.tenant
    client = login(acme.owner, sudo=True)
    new_key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    body = html.unescape(
        client.post(
            reverse("keys:aws_save_and_test", args=["acme"]), {"key_arn": new_key}, follow=True
        ).content.decode()
    )
    assert "Switch to this key" in body
    draft = KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS, state="tested")
    response = client.post(reverse("keys:switch_source", args=["acme", draft.pk]), follow=True)
    assert "Switching to the new key" in html.unescape(response.content.decode())
    assert state(tenant) == ServiceState.REWRAPPING
    assert kek_rewrap_run(source_id=str(draft.pk)) == "done"
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    versions = set(
        DataKey.objects.filter(tenant=tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    )
    assert versions == {new_key}
    old = (
        KeySource.objects.filter(tenant=tenant, kind=SourceKind.AWS_KMS).exclude(pk=draft.pk).get()
    )
    assert old.state == "retired"
    assert KekVersion.objects.get(provider_version=byok["key_arn"]).state == KekState.RETIRED
    reset_for_tests()
    assert record_fields(tenant, byok["records"][0])
    assert AuditEvent.objects.filter(action="kek.switch_source").exists()
