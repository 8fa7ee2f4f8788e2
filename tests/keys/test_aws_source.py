"""Bring your own AWS KMS key: register, Save and Test, Enable, against LocalStack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

import keys.rootkey
from audit.models import AuditEvent
from keys.models import DataKey, KeySource, SourceKind, SourceState
from keys.providers.base import KeyAccessDenied
from keys.runtime import reset_for_tests
from keys.services.sources import byok_enable_run
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import login
from tests.support.aws import aws_endpoint, boto_client, create_kms_key

VENDOR_ACCOUNT = "999988887777"
CUSTOMER_ACCOUNT = "111122223333"


@pytest.fixture(autouse=True)
def _aws(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.KEYWARD_AWS_ENDPOINT_URL = aws_endpoint()
    settings.KEYWARD_AWS_TIMEOUT_SECONDS = 3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", VENDOR_ACCOUNT)  # LocalStack: the account id
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "vendor-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    reset_for_tests()


@pytest.fixture
def key_arn() -> str:
    return create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")


def save_and_test(client: Any, key_arn: str, role_arn: str = "", slug: str = "acme") -> Any:
    return client.post(
        reverse("keys:aws_save_and_test", args=[slug]),
        {"key_arn": key_arn, "role_arn": role_arn},
        follow=True,
    )


def test_the_page_shows_the_policies_to_add(acme) -> None:
    body = login(acme.key_admin).get(reverse("keys:aws", args=["acme"])).content.decode()
    assert "kms:EncryptionContext:keyward:tenant" in body
    assert str(acme.tenant.pk) in body
    assert "sts:ExternalId" in body and "keyward-" in body
    assert 'data-testid="enable" disabled' in body


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not an arn", "This is not a usable KMS key ARN"),
        ("arn:aws:kms:eu-west-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab", "12 digits"),
        (
            "arn:aws-iso:kms:us-iso-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "partition",
        ),
        ("arn:aws:kms:eu-west-1:111122223333:alias/aws/s3", "AWS managed key"),
    ],
)
def test_a_malformed_arn_is_refused_before_anything_is_saved(acme, value, message) -> None:
    client = login(acme.key_admin, sudo=True)
    response = client.post(reverse("keys:aws_save_and_test", args=["acme"]), {"key_arn": value})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not KeySource.objects.filter(kind=SourceKind.AWS_KMS).exists()
    failure = AuditEvent.objects.get(tenant=acme.tenant, action="key_source.register")
    assert failure.outcome == "failure"


def test_a_good_key_passes_every_check_and_offers_enable(acme, key_arn) -> None:
    client = login(acme.key_admin, sudo=True)
    body = save_and_test(client, key_arn).content.decode()
    assert "Every check passed." in body
    assert "Enable my key" in body
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.AWS_KMS)
    assert source.state == SourceState.TESTED and source.test_passed
    assert {r["name"] for r in source.test_results} >= {"Key found", "Key enabled", "Round trip"}
    test_event = AuditEvent.objects.get(tenant=acme.tenant, action="key_source.test")
    assert test_event.outcome == "success"


def test_a_disabled_key_fails_with_what_to_do_and_enable_is_refused(acme, key_arn) -> None:
    boto_client("kms", CUSTOMER_ACCOUNT).disable_key(KeyId=key_arn)
    client = login(acme.owner, sudo=True)
    body = save_and_test(client, key_arn).content.decode()
    assert "Failed: Key enabled" in body
    assert "enable the key in the AWS KMS console" in body
    assert 'data-testid="enable" disabled' in body
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.AWS_KMS)
    response = client.post(reverse("keys:enable_source", args=["acme", source.pk]), follow=True)
    assert "Run Save and Test with these settings first" in response.content.decode()
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.VENDOR_MANAGED
    assert AuditEvent.objects.filter(action="byok.enable", outcome="failure").exists()


def test_changing_the_settings_after_a_pass_needs_a_new_test(acme, key_arn) -> None:
    client = login(acme.owner, sudo=True)
    save_and_test(client, key_arn)
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.AWS_KMS)
    source.config = {**source.config, "key_arn": create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")}
    source.save()
    assert not source.test_passed
    response = client.post(reverse("keys:enable_source", args=["acme", source.pk]), follow=True)
    assert "Run Save and Test with these settings first" in response.content.decode()


@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_read_only_roles_cannot_register(acme, key_arn, role) -> None:
    client = login(getattr(acme, role), sudo=True)
    assert client.get(reverse("keys:aws", args=["acme"])).status_code == 403
    response = client.post(reverse("keys:aws_save_and_test", args=["acme"]), {"key_arn": key_arn})
    assert response.status_code == 403
    assert not KeySource.objects.filter(kind=SourceKind.AWS_KMS).exists()


def test_another_tenants_source_cannot_be_enabled(acme, globex, key_arn) -> None:
    save_and_test(login(globex.owner, sudo=True), key_arn, slug="globex")
    foreign = KeySource.objects.get(tenant=globex.tenant, kind=SourceKind.AWS_KMS)
    client = login(acme.owner, sudo=True)
    assert client.post(reverse("keys:enable_source", args=["acme", foreign.pk])).status_code == 404
    assert (
        client.post(reverse("keys:enable_source", args=["globex", foreign.pk])).status_code == 404
    )


def test_save_and_test_needs_a_recent_password(acme, key_arn) -> None:
    response = login(acme.key_admin).post(
        reverse("keys:aws_save_and_test", args=["acme"]), {"key_arn": key_arn}
    )
    assert response["Location"].startswith(reverse("console:sudo"))


def test_an_unreachable_kms_fails_the_test_quickly_and_changes_nothing(
    acme, key_arn, settings
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{closed_port}"
    body = save_and_test(login(acme.owner, sudo=True), key_arn).content.decode()
    assert "Failed: Key found" in body
    assert 'data-testid="enable" disabled' in body
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.VENDOR_MANAGED


def test_enable_moves_every_dek_under_the_customer_key(acme, key_arn, settings) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(20)))
    client = login(acme.owner, sudo=True)
    save_and_test(client, key_arn)
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.AWS_KMS)
    response = client.post(reverse("keys:enable_source", args=["acme", source.pk]), follow=True)
    assert "Moving your data keys under your key" in response.content.decode()
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.MIGRATING
    assert 'data-testid="enable-progress"' in response.content.decode()

    byok_enable_run(source_id=str(source.pk))  # the Celery task's body
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    source.refresh_from_db()
    assert source.state == SourceState.ACTIVE
    for dek in DataKey.objects.filter(tenant=acme.tenant).select_related("kek_version"):
        assert dek.kek_version.source_id == source.pk  # no vendor-wrapped copy is left
        assert dek.kek_version.provider_version.startswith(
            f"arn:aws:kms:eu-west-1:{CUSTOMER_ACCOUNT}:key/"
        )
    assert (
        KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.LOCAL).state
        == SourceState.RETIRED
    )
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="byok.enabled").exists()

    # Without the vendor's root key file, data still reads: only KMS unwraps it.
    root = Path(settings.KEYWARD_ROOT_KEY_FILE)
    hidden = root.with_name(root.name + ".hidden")
    root.rename(hidden)
    keys.rootkey._root = None
    try:
        reset_for_tests()
        row = Record.objects.select_related("sealed").get(pk=records[0].pk)
        assert record_fields(acme.tenant, row)["sid"].startswith("S-1-5-21-")
        # The customer disables the key: once the cache is gone, nothing decrypts.
        boto_client("kms", CUSTOMER_ACCOUNT).disable_key(KeyId=key_arn)
        assert record_fields(acme.tenant, row)  # still cached in this process
        reset_for_tests()  # the cache expires (or a new process starts)
        with pytest.raises(KeyAccessDenied):
            record_fields(acme.tenant, row)
    finally:
        hidden.rename(root)
        keys.rootkey._root = None


@pytest.mark.parametrize("case", ["missing_alias", "rsa_key", "hmac_key"])
def test_unusable_keys_fail_their_named_check_and_are_audited(acme, case) -> None:
    kms = boto_client("kms", CUSTOMER_ACCOUNT)
    if case == "missing_alias":
        arn, check = f"arn:aws:kms:eu-west-1:{CUSTOMER_ACCOUNT}:alias/does-not-exist", "Key found"
    elif case == "rsa_key":
        arn = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
        check = "Symmetric encryption key"
    else:
        arn = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"][
            "Arn"
        ]
        check = "Symmetric encryption key"
    body = save_and_test(login(acme.key_admin, sudo=True), arn).content.decode()
    assert f"Failed: {check}" in body
    assert 'data-testid="enable" disabled' in body
    event = AuditEvent.objects.get(tenant=acme.tenant, action="key_source.test")
    assert event.outcome == "failure" and check in event.reason
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.VENDOR_MANAGED
