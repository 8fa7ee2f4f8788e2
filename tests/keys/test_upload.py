"""Wrapped-key upload in the console: download, wrap with openssl as README.txt says, upload."""

from __future__ import annotations

import io
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from keys.models import DataKey, ImportState, KekVersion, KeyImport, KeySource, SourceKind
from keys.runtime import reset_for_tests
from keys.services.sources import byok_enable_run
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import login
from tests.crypto.test_importkit import listed_files, step_commands


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


def download(client: Any, slug: str, folder: Path) -> dict[str, bytes]:
    response = client.post(reverse("keys:import_parameters", args=[slug]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        files = {name: bundle.read(name) for name in bundle.namelist()}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def customer_wraps(folder: Path, steps: set[int] | None = None) -> str:
    """Run README.txt's commands exactly as a customer would; return the KCV they print."""
    readme = (folder / "README.txt").read_text()
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", step_commands(readme, steps or {1, 2, 3})],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def upload(client: Any, slug: str, wrapped: bytes, token: bytes, **extra: Any) -> Any:
    return client.post(
        reverse("keys:upload_key", args=[slug]),
        {
            "wrapped_key": SimpleUploadedFile("CustomerEncryptionKey.bin", wrapped),
            "token": SimpleUploadedFile("ImportToken.bin", token),
            **extra,
        },
        follow=True,
    )


def test_download_wrap_with_openssl_upload_kcv_enable(acme, tmp_path) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(10)))
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path)
    assert set(files) == {
        "WrappingPublicKey.bin",
        "WrappingPublicKey.pem",
        "ImportToken.bin",
        "README.txt",
    }
    kcv = customer_wraps(tmp_path)
    response = upload(
        client,
        "acme",
        (tmp_path / "CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
    )
    body = response.content.decode()
    assert f"Its key check value is {kcv}" in body
    version = KekVersion.objects.get(source__tenant=acme.tenant, source__kind=SourceKind.UPLOADED)
    assert version.check_value == kcv
    customer_key = (tmp_path / "CustomerKey.bin").read_bytes()
    assert customer_key not in bytes(version.material or b"")  # stored only sealed
    key_import = KeyImport.objects.get(tenant=acme.tenant)
    assert key_import.state == ImportState.USED and bytes(key_import.private_wrapped) == b""
    assert "Enable my key" in body
    source = version.source
    client.post(reverse("keys:enable_source", args=["acme", source.pk]))
    byok_enable_run(source_id=str(source.pk))
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    assert set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    ) == {"upload-1"}
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=records[0].pk)
    assert record_fields(acme.tenant, row)["sid"]
    assert AuditEvent.objects.filter(
        tenant=acme.tenant, action="key.upload", outcome="success"
    ).exists()


def test_the_readme_lists_every_file_of_the_download(acme, tmp_path) -> None:
    files = download(login(acme.owner, sudo=True), "acme", tmp_path)
    listed = listed_files(files["README.txt"].decode())
    assert sorted(listed) == sorted(files)


@pytest.fixture
def prepared(acme, tmp_path) -> dict[str, Any]:
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path)
    customer_wraps(tmp_path)
    return {
        "client": client,
        "token": files["ImportToken.bin"],
        "wrapped": (tmp_path / "CustomerEncryptionKey.bin").read_bytes(),
        "folder": tmp_path,
    }


def refused(response: Any, message: str, acme: Any) -> None:
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not KekVersion.objects.filter(source__kind=SourceKind.UPLOADED).exists()
    assert AuditEvent.objects.filter(
        tenant=acme.tenant, action="key.upload", outcome="failure"
    ).exists()


def test_a_reused_token_is_refused(acme, prepared) -> None:
    upload(prepared["client"], "acme", prepared["wrapped"], prepared["token"])
    response = upload(prepared["client"], "acme", prepared["wrapped"], prepared["token"])
    assert response.status_code == 400
    assert "This import token was used already" in response.content.decode()
    assert KekVersion.objects.filter(source__kind=SourceKind.UPLOADED).count() == 1


def test_an_expired_token_is_refused(acme, prepared) -> None:
    from crypto import importkit
    from keys.services.uploads import _token_secret

    key_import = KeyImport.objects.get()
    expired = importkit.issue_token(  # what Keyward issued 25 hours ago for this import
        _token_secret(),
        tenant_id=str(acme.tenant.pk),
        import_id=str(key_import.pk),
        public_der=bytes(key_import.public_der),
        now=timezone.now() - timedelta(hours=25),
    )
    refused(upload(prepared["client"], "acme", prepared["wrapped"], expired), "expired", acme)


def test_another_tenants_token_is_refused(acme, globex, prepared, tmp_path) -> None:
    other = download(login(globex.owner, sudo=True), "globex", tmp_path / "globex")
    response = upload(prepared["client"], "acme", prepared["wrapped"], other["ImportToken.bin"])
    refused(response, "belongs to another tenant", acme)


def test_a_tampered_token_is_refused(acme, prepared) -> None:
    token = bytearray(prepared["token"])
    token[-1] ^= 1
    refused(upload(prepared["client"], "acme", prepared["wrapped"], bytes(token)), "token", acme)


def test_random_bytes_are_refused(acme, prepared) -> None:
    import os

    response = upload(prepared["client"], "acme", os.urandom(512), prepared["token"])
    refused(response, "could not unwrap", acme)
    assert KeyImport.objects.get().state == ImportState.OPEN  # nothing was used up


def test_a_key_of_the_wrong_size_is_refused(acme, prepared) -> None:
    folder = prepared["folder"]
    (folder / "CustomerKey.bin").write_bytes(b"\x17" * 3 + bytes(range(1, 14)))  # 16 bytes
    customer_wraps(folder, {2})
    wrapped = (folder / "CustomerEncryptionKey.bin").read_bytes()
    refused(upload(prepared["client"], "acme", wrapped, prepared["token"]), "16 bytes", acme)


def test_a_key_wrapped_with_another_public_key_is_refused(acme, prepared, tmp_path) -> None:
    other_folder = tmp_path / "other"
    download(prepared["client"], "acme", other_folder)  # another import: another public key
    customer_wraps(other_folder)
    wrapped = (other_folder / "CustomerEncryptionKey.bin").read_bytes()
    refused(
        upload(prepared["client"], "acme", wrapped, prepared["token"]), "could not unwrap", acme
    )


def test_a_10_mb_upload_is_refused_before_it_is_read(acme, prepared) -> None:
    response = upload(prepared["client"], "acme", b"\0" * (10 * 1024 * 1024), prepared["token"])
    refused(response, "at most 65536 bytes are accepted", acme)


def test_a_past_expiry_is_refused(acme, prepared) -> None:
    response = upload(
        prepared["client"],
        "acme",
        prepared["wrapped"],
        prepared["token"],
        expires_at="2000-01-01T00:00",
    )
    refused(response, "must be in the future", acme)


@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_read_only_roles_cannot_download_or_upload(acme, role) -> None:
    client = login(getattr(acme, role), sudo=True)
    assert client.post(reverse("keys:import_parameters", args=["acme"])).status_code == 403
    assert client.get(reverse("keys:upload", args=["acme"])).status_code == 403
    assert not KeyImport.objects.exists()


def test_upload_needs_a_recent_password(acme, prepared) -> None:
    client = login(acme.key_admin)
    response = client.post(reverse("keys:upload_key", args=["acme"]), {})
    assert response["Location"].startswith(reverse("console:sudo"))


def test_a_new_upload_for_a_key_in_use_waits_as_a_rotation(acme, tmp_path) -> None:
    client = login(acme.owner, sudo=True)
    first = download(client, "acme", tmp_path / "one")
    customer_wraps(tmp_path / "one")
    upload(
        client,
        "acme",
        (tmp_path / "one/CustomerEncryptionKey.bin").read_bytes(),
        first["ImportToken.bin"],
    )
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.UPLOADED)
    client.post(reverse("keys:enable_source", args=["acme", source.pk]))
    byok_enable_run(source_id=str(source.pk))

    second = download(client, "acme", tmp_path / "two")
    customer_wraps(tmp_path / "two")
    body = upload(
        client,
        "acme",
        (tmp_path / "two/CustomerEncryptionKey.bin").read_bytes(),
        second["ImportToken.bin"],
    ).content.decode()
    assert "upload-2" in body
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.ROTATION_PENDING
    source.refresh_from_db()
    assert source.config["version"] == "upload-1"  # data keys stay under the confirmed version
    assert KekVersion.objects.get(source=source, provider_version="upload-2").state == "pending"
    assert set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    ) == {"upload-1"}
