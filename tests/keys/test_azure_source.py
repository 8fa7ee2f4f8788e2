"""A key in the customer's Azure Key Vault: register, Save and Test, Enable, rotation.

Against the Key Vault test server (HTTPS, Entra token endpoint), through the real
azure-identity and azure-keyvault-keys clients.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from audit.models import AuditEvent
from crypto.envelope import KeyRevoked
from keys.models import DataKey, KekState, KeySource, SourceKind, SourceState
from keys.providers.base import KeyAccessDenied, KeyMaterialInvalid
from keys.registry import provider_for
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from keys.services.rotation import kek_rewrap_run
from keys.services.sources import byok_enable_run
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import login
from tests.servers.keyvault import make_client_certificate


def save(client: Any, azure: Any, **overrides: Any) -> Any:
    return client.post(
        reverse("keys:azure_save_and_test", args=["acme"]), azure.form(**overrides), follow=True
    )


def source_of(tenant: Any) -> KeySource:
    return KeySource.objects.exclude(state__in=["retired", "revoked"]).get(
        tenant=tenant, kind=SourceKind.AZURE_KEYVAULT
    )


def test_the_page_explains_access_and_keeps_enable_disabled(acme, azure) -> None:
    body = login(acme.key_admin).get(reverse("keys:azure", args=["acme"])).content.decode()
    assert "Key Vault Crypto Service Encryption User" in body
    assert 'data-testid="enable" disabled' in body


def test_a_good_key_passes_every_check_and_the_secret_is_never_shown(acme, azure) -> None:
    client = login(acme.key_admin, sudo=True)
    body = save(client, azure).content.decode()
    assert "Every check passed." in body, body
    for check in ("Credential accepted", "Key found", "Key enabled", "Round trip"):
        assert f"Passed: {check}" in body
    assert 'data-testid="enable" disabled' not in body
    assert azure.secret not in body
    source = source_of(acme.tenant)
    assert source.test_passed and source.state == SourceState.TESTED
    assert azure.secret.encode() not in bytes(source.sealed_credentials or b"")
    assert azure.secret not in str(source.config)
    for event in AuditEvent.objects.filter(tenant=acme.tenant):
        assert azure.secret not in str(event.details) + event.reason

    # Saving again without the secret keeps the saved one (and tests again).
    body = save(client, azure, client_secret="").content.decode()
    assert "Every check passed." in body
    assert "A client secret is saved." in body
    assert azure.secret not in body


def test_a_new_registration_accepts_only_blobs_keyward_signed(acme, azure) -> None:
    save(login(acme.key_admin, sudo=True), azure)
    source = source_of(acme.tenant)
    assert source.config["wraps_signed"] == "true"
    provider = provider_for(source)
    version = provider.current_version()
    dek = os.urandom(32)
    signed = provider.wrap(dek, {"tenant": str(acme.tenant.pk)})
    assert provider.unwrap(signed.blob, {"tenant": str(acme.tenant.pk)}, version) == dek
    # Version 1 (unsigned) is what anyone with the public key could make.
    unsigned = b"\x01" + signed.blob[5:-64] + os.urandom(32)
    with pytest.raises(KeyMaterialInvalid, match="not a DEK wrapped by Keyward"):
        provider.unwrap(unsigned, {"tenant": str(acme.tenant.pk)}, version)


def test_a_certificate_credential_works(acme, azure) -> None:
    pem = make_client_certificate()
    azure.server.register_app(azure.client_id, certificate=pem)
    client = login(acme.key_admin, sudo=True)
    upload = SimpleUploadedFile("app.pem", pem)
    body = save(
        client, azure, auth_method="certificate", client_secret="", client_certificate=upload
    ).content.decode()
    assert "Every check passed." in body, body
    source = source_of(acme.tenant)
    assert source.config["auth_method"] == "certificate"
    assert len(source.config["certificate_thumbprint"]) == 40
    assert b"PRIVATE KEY" not in bytes(source.sealed_credentials or b"")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://169.254.169.254", "IP"),
        ("http://contoso.vault.azure.net", "https://"),
        ("https://contoso.example.com", "vault.azure.net"),
        ("https://contoso.vault.azure.net:8443", "443"),
        ("https://contoso.vault.azure.net.evil.example", "vault.azure.net"),
    ],
)
def test_vault_urls_outside_key_vault_are_refused_before_any_connection(
    acme, azure, url, message
) -> None:
    requests_before = len(azure.server.requests)
    response = save(login(acme.key_admin, sudo=True), azure, vault_url=url)
    assert response.status_code == 400
    body = response.content.decode()
    assert 'data-testid="vault_url-error"' in body
    assert message in body
    assert not KeySource.objects.filter(kind=SourceKind.AZURE_KEYVAULT).exists()
    assert AuditEvent.objects.get(action="key_source.register").outcome == "failure"
    assert len(azure.server.requests) == requests_before


def test_missing_secret_and_malformed_ids_are_refused(acme, azure) -> None:
    response = save(
        login(acme.key_admin, sudo=True), azure, client_secret="", tenant_id="not-a-guid"
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert 'data-testid="client_secret-error"' in body
    assert 'data-testid="tenant_id-error"' in body
    assert not KeySource.objects.filter(kind=SourceKind.AZURE_KEYVAULT).exists()


@pytest.mark.parametrize(
    ("case", "check", "advice"),
    [
        ("ec_key", "RSA key of 2048 bits or more", "RSA"),
        ("no_unwrap", "Wrap and unwrap allowed", "Unwrap Key"),
        ("expired", "Key in date", "expire"),
        ("wrong_secret", "Credential accepted", "secret"),
        ("forbidden", "Key found", "Key Vault Crypto Service Encryption User"),
    ],
)
def test_unusable_keys_and_credentials_fail_their_named_check(
    acme, azure, case, check, advice
) -> None:
    overrides: dict[str, Any] = {}
    if case == "ec_key":
        azure.server.create_key(azure.key_name, kty="EC")
    elif case == "no_unwrap":
        azure.server.create_key(azure.key_name, key_ops=["wrapKey", "encrypt", "decrypt"])
    elif case == "expired":
        azure.server.create_key(azure.key_name, exp=int(time.time()) - 3600)
    elif case == "wrong_secret":
        overrides["client_secret"] = "not-the-secret"
    else:
        azure.server.deny_app(azure.client_id)
    body = save(login(acme.key_admin, sudo=True), azure, **overrides).content.decode()
    assert f"Failed: {check}" in body, body
    assert advice.lower() in body.lower()
    assert 'data-testid="enable" disabled' in body
    event = AuditEvent.objects.get(tenant=acme.tenant, action="key_source.test")
    assert event.outcome == "failure" and check in event.reason


@pytest.mark.parametrize("fault", ["500", "stall"])
def test_a_vault_that_fails_or_never_answers_ends_the_test_promptly(acme, azure, fault) -> None:
    if fault == "500":
        azure.server.fail(500)
    else:
        azure.server.stall(30)
    started = time.monotonic()
    body = save(login(acme.key_admin, sudo=True), azure).content.decode()
    elapsed = time.monotonic() - started
    azure.server.reset_faults()
    assert "Some checks failed" in body
    assert "Failed: Key found" in body
    assert elapsed < 25, elapsed
    assert AuditEvent.objects.get(action="key_source.test").outcome == "failure"
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.VENDOR_MANAGED


def enable(client: Any, azure: Any, tenant: Any) -> KeySource:
    assert "Every check passed." in save(client, azure).content.decode()
    source = source_of(tenant)
    response = client.post(reverse("keys:enable_source", args=["acme", source.pk]), follow=True)
    assert "Moving your data keys under your key" in response.content.decode()
    byok_enable_run(source_id=str(source.pk))
    source.refresh_from_db()
    return source


def test_enable_then_a_new_version_is_confirmed_and_rewrapped(acme, azure) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(10)))
    client = login(acme.owner, sudo=True)
    source = enable(client, azure, acme.tenant)
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    first = azure.server.versions(azure.key_name)[-1].version
    assert source.config["key_version"] == first
    assert set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    ) == {first}
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=records[0].pk)
    assert record_fields(acme.tenant, row)["sid"].startswith("S-1-5-21-")
    assert key_health_check(tenant=acme.tenant) == "ok"

    # The customer rotates the key in Key Vault: the tenant pauses for a confirmation.
    second = azure.server.add_version(azure.key_name).version
    assert key_health_check(tenant=acme.tenant) == "rotation_pending"
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.ROTATION_PENDING
    assert source.versions.get(state=KekState.PENDING).provider_version == second

    client.post(reverse("keys:rotation_confirm", args=["acme"]), follow=True)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    acme.tenant.refresh_from_db()
    source.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    assert source.config["key_version"] == second
    assert set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    ) == {second}
    reset_for_tests()
    assert record_fields(acme.tenant, row)["sid"].startswith("S-1-5-21-")

    # The customer disables the key: revoked, and nothing decrypts once caches are gone.
    azure.server.disable_key(azure.key_name)
    assert key_health_check(tenant=acme.tenant) == "revoked"
    reset_for_tests()
    # Refused by the key store, or before it is asked when this process already
    # reads the revoke from the database: either way nothing decrypts.
    with pytest.raises((KeyAccessDenied, KeyRevoked)):
        record_fields(acme.tenant, row)
