"""Imports lose their wrapping private key when they expire or the tenant is shredded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from audit.models import AuditEvent
from keys.models import ImportState, KeyImport
from keys.services.uploads import key_imports_expire
from keys.tasks import expire_key_imports
from tests.conftest import login
from tests.keys.test_upload import download, upload


def _two_imports(acme: Any, tmp_path: Any) -> tuple[KeyImport, KeyImport, Any, dict[str, bytes]]:
    client = login(acme.owner, sudo=True)
    download(client, "acme", tmp_path / "old")
    files = download(client, "acme", tmp_path / "new")
    old, new = KeyImport.objects.order_by("created")
    return old, new, client, files


def test_an_expired_import_loses_its_private_key_and_says_so(acme: Any, tmp_path: Any) -> None:
    old, new, _, _ = _two_imports(acme, tmp_path)
    KeyImport.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_key_imports() == 1
    old.refresh_from_db()
    new.refresh_from_db()
    assert old.state == ImportState.EXPIRED and bytes(old.private_wrapped) == b""
    assert new.state == ImportState.OPEN and bytes(new.private_wrapped) != b""
    event = AuditEvent.objects.get(tenant=acme.tenant, action="key.import_expired")
    assert event.target == str(old.pk) and event.actor_kind == "system"
    assert expire_key_imports() == 0  # idempotent


def test_an_upload_to_an_expired_import_is_refused(acme: Any, tmp_path: Any) -> None:
    old, _, client, _ = _two_imports(acme, tmp_path)
    token = (tmp_path / "old" / "ImportToken.bin").read_bytes()
    KeyImport.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expire_key_imports()
    response = upload(client, "acme", b"\0" * 512, token)
    assert response.status_code == 400
    assert KeyImport.objects.get(pk=old.pk).state == ImportState.EXPIRED


def test_crypto_shredding_takes_every_import_of_the_tenant(
    acme: Any, globex: Any, tmp_path: Any
) -> None:
    _two_imports(acme, tmp_path)
    download(login(globex.owner, sudo=True), "globex", tmp_path / "globex")
    assert key_imports_expire(tenant=acme.tenant) == 2
    assert not KeyImport.objects.filter(tenant=acme.tenant).exclude(private_wrapped=b"").exists()
    assert KeyImport.objects.filter(tenant=globex.tenant).exclude(private_wrapped=b"").count() == 1
