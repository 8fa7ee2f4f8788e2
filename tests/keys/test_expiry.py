"""Uploaded keys that expire: warnings once per threshold, then revoked at expiry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from console.shell import shell_facts
from crypto.envelope import KeyRevoked
from keys.expiry import warn_expiring_keys
from keys.models import KekVersion, KeySource, SourceKind
from keys.providers.base import KeyAccessDenied
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from keys.services.sources import byok_enable_run
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import login
from tests.keys.test_upload import customer_wraps, download, upload


@pytest.fixture
def uploaded(acme, tmp_path: Path, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    reset_for_tests()
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path)
    customer_wraps(tmp_path)
    expires = (timezone.now() + timedelta(days=40)).strftime("%Y-%m-%dT%H:%M")
    upload(
        client,
        "acme",
        (tmp_path / "CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
        expires_at=expires,
    )
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.UPLOADED)
    client.post(reverse("keys:enable_source", args=["acme", source.pk]))
    byok_enable_run(source_id=str(source.pk))
    return {
        "acme": acme,
        "client": client,
        "records": records,
        "version": KekVersion.objects.get(source=source),
    }


def test_warnings_go_out_once_per_threshold(uploaded, django_capture_on_commit_callbacks) -> None:
    version = uploaded["version"]
    with django_capture_on_commit_callbacks(execute=True):
        assert warn_expiring_keys() == 0  # 40 days out: nothing yet
        version.material_expires_at = timezone.now() + timedelta(days=29)
        version.save()
        assert warn_expiring_keys() == 1
        assert warn_expiring_keys() == 0  # once
        version.material_expires_at = timezone.now() + timedelta(hours=20)
        version.save()
        assert warn_expiring_keys() == 1  # the 1-day warning (the 7-day one is folded in)
    assert [m.subject for m in mail.outbox] == [
        "[Keyward] Acme: your uploaded key expires in 30 day(s)",
        "[Keyward] Acme: your uploaded key expires in 1 day(s)",
    ]
    assert set(mail.outbox[0].to) == {"owner@acme.test", "key_admin@acme.test"}
    assert AuditEvent.objects.filter(action="key.expiry_warning").count() == 2


def test_the_banner_warns_within_30_days(uploaded) -> None:
    version, client = uploaded["version"], uploaded["client"]
    assert 'data-testid="expiry-banner"' not in client.get("/t/acme/").content.decode()
    assert not shell_facts(version.source.tenant).key_expiring
    version.material_expires_at = timezone.now() + timedelta(days=6)
    version.save()
    assert shell_facts(version.source.tenant).key_expiring
    body = client.get("/t/acme/").content.decode()
    assert 'data-testid="expiry-banner"' in body and "Upload a new key before then" in body


def test_at_expiry_the_tenant_behaves_as_revoked(uploaded) -> None:
    acme, version = uploaded["acme"], uploaded["version"]
    version.material_expires_at = timezone.now() - timedelta(seconds=1)
    version.save()
    assert key_health_check(tenant=acme.tenant) == "revoked"
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.REVOKED
    reset_for_tests()
    # Revoked state (once published) or the expired copy itself: either way, nothing reads.
    with pytest.raises((KeyRevoked, KeyAccessDenied)):
        record_fields(acme.tenant, uploaded["records"][0])
