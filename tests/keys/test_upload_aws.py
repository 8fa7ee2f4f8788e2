"""Uploads into the vendor's AWS KMS (EXTERNAL-origin keys), against LocalStack."""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.urls import reverse

from keys.aws_vendor import delete_imported_material, vendor_kms
from keys.models import DataKey, KekVersion, KeyImport, KeySource, SourceKind
from keys.providers.base import KeyAccessDenied
from keys.runtime import reset_for_tests
from keys.services.sources import byok_enable_run
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import login
from tests.keys.test_aws_source import _aws  # noqa: F401  (autouse: LocalStack, vendor account)
from tests.keys.test_upload import customer_wraps, download, upload


@pytest.fixture(autouse=True)
def _kms_store(settings: Any) -> None:
    settings.KEYWARD_UPLOAD_KEY_STORE = "aws_kms"


def test_the_netcore_flow_imports_into_an_external_key(acme, tmp_path) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(5)))
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path)
    key_import = KeyImport.objects.get()
    assert key_import.aws_key_arn.startswith("arn:aws:kms:eu-west-1:999988887777:key/")
    assert bytes(key_import.private_wrapped) == b""  # Keyward holds no private key here
    described = vendor_kms().describe_key(KeyId=key_import.aws_key_arn)["KeyMetadata"]
    assert (described["Origin"], described["KeyState"]) == ("EXTERNAL", "PendingImport")

    customer_wraps(tmp_path)  # README.txt's openssl commands, with AWS's wrapping key
    body = upload(
        client,
        "acme",
        (tmp_path / "CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
    ).content.decode()
    assert "Key received" in body and "Enable my key" in body
    described = vendor_kms().describe_key(KeyId=key_import.aws_key_arn)["KeyMetadata"]
    assert described["KeyState"] == "Enabled"

    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.UPLOADED)
    client.post(reverse("keys:enable_source", args=["acme", source.pk]))
    byok_enable_run(source_id=str(source.pk))
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    assert set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    ) == {key_import.aws_key_arn}
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=records[0].pk)
    assert record_fields(acme.tenant, row)["sid"]

    # Revoking destroys Keyward's copy: DeleteImportedKeyMaterial.
    delete_imported_material(key_import.aws_key_arn)
    reset_for_tests()
    with pytest.raises(KeyAccessDenied):
        record_fields(acme.tenant, row)


def test_random_bytes_are_refused_and_nothing_changes(acme, tmp_path) -> None:
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path)
    response = upload(client, "acme", os.urandom(512), files["ImportToken.bin"])
    assert response.status_code == 400
    assert "could not import the key" in response.content.decode()
    assert not KekVersion.objects.filter(source__kind=SourceKind.UPLOADED).exists()
    assert KeyImport.objects.get().state == "open"


def test_a_wrong_size_is_refused_before_aws_is_called(acme, tmp_path) -> None:
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path)
    response = upload(client, "acme", os.urandom(256), files["ImportToken.bin"])
    assert response.status_code == 400
    assert "expected a 512-byte RSA-4096 ciphertext, got 256 bytes" in response.content.decode()
