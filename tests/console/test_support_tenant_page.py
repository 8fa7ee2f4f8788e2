"""A tenant's support page: key metadata, never data, secrets or key material."""

from __future__ import annotations

import base64

from django.urls import reverse
from django.utils import timezone

from api.tokens import api_token_create
from audit.services import Actor
from keys.models import DataKey, HealthResult, KekState, KekVersion, KeyHealthCheck, SourceKind
from keys.services.sources import key_source_register
from objects.models import Direction, Location, MigrationState, ObjectMigration
from objects.services import object_put
from records.fields import NewRecord
from records.services import records_create
from tests.conftest import TenantUsers, login

SYSTEM = Actor.system("tests")


def test_support_page_shows_metadata_and_no_secret(acme: TenantUsers, support) -> None:
    tenant = acme.tenant
    records_create(
        tenant=tenant,
        items=[NewRecord("user", "u-secret-1", {"email": "ada.lovelace.secret@example.com"})],
    )
    object_put(tenant=tenant, key="reports/q3-payroll.csv", chunks=[b"object plaintext 4242"])
    token = api_token_create(tenant=tenant, actor=SYSTEM, name="etl", scopes=["records:read"])
    source = key_source_register(
        tenant=tenant,
        kind=SourceKind.AZURE_KEYVAULT,
        config={"vault_url": "https://acme.vault.azure.net", "key_name": "kek"},
        credentials={"client_secret": "azure-client-secret-do-not-show"},
        actor=SYSTEM,
    )
    KekVersion.objects.create(
        source=source,
        provider_version="https://acme.vault.azure.net/keys/kek/v1",
        state=KekState.PENDING,
        check_value="C0FFEE1234",
    )
    KeyHealthCheck.objects.create(
        tenant=tenant,
        source=source,
        result=HealthResult.DEGRADED,
        message="key store unreachable: connection refused",
        first_at=timezone.now(),
        last_at=timezone.now(),
        runs=3,
    )
    ObjectMigration.objects.create(
        tenant=tenant,
        direction=Direction.TO_DEDICATED,
        state=MigrationState.FAILED,
        source_location=Location.SHARED,
        target_location=Location.DEDICATED,
        target_dek=DataKey.objects.get(tenant=tenant, version=1),
        error="verification failed: checksum differs",
    )
    response = login(support).get(reverse("support:tenant", args=["acme"]))
    assert response.status_code == 200
    html = response.content.decode()
    # What troubleshooting needs.
    assert "Azure Key Vault key" in html
    assert "https://acme.vault.azure.net/keys/kek/v1" in html
    assert "key store unreachable: connection refused" in html
    assert "verification failed: checksum differs" in html
    assert "key_source.register" in html  # a key event of the trail
    # Never data, secrets or key material.
    secrets = [
        "ada.lovelace.secret@example.com",
        "u-secret-1",
        "object plaintext 4242",
        "q3-payroll",
        token.text,
        token.text.split("_", 2)[2],  # the secret (it may hold "_" itself)
        "azure-client-secret-do-not-show",
        "C0FFEE1234",
    ]
    for dek in DataKey.objects.filter(tenant=tenant):
        wrapped = bytes(dek.wrapped)
        secrets += [wrapped.hex(), base64.b64encode(wrapped).decode()[:24]]
    for secret in secrets:
        assert secret not in html, secret
    # People of the tenant are not named, as on the read-only pages.
    assert acme.owner.email not in html


def test_support_page_of_an_unknown_tenant_is_404(support) -> None:
    assert login(support).get(reverse("support:tenant", args=["nobody"])).status_code == 404
