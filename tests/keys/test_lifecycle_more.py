"""Destroy and cancel, remove BYOK, restore an uploaded key, and the review's races."""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from crypto.importkit import key_check_value
from keys.errors import KeyActionRefused
from keys.models import DataKey, DekState, KekVersion, KeySource, SourceKind, SourceState
from keys.runtime import envelope, reset_for_tests
from keys.services.deks import dek_rotate
from keys.services.lifecycle import byok_remove_run, tenant_destroy_due
from keys.services.sources import byok_enable_run
from keys.tasks import rotate_due_deks
from records.models import JobState, Record, ReencryptionJob
from records.reencryption import reencryption_run
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tests.conftest import login
from tests.keys.test_upload import customer_wraps, download, upload

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


def text(response: Any) -> str:
    return html.unescape(response.content.decode())


@pytest.fixture
def uploaded(acme, tmp_path) -> dict[str, Any]:
    """Acme protected by an uploaded key (the embedded default: no AWS)."""
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(4)))
    client = login(acme.owner, sudo=True)
    files = download(client, "acme", tmp_path / "one")
    customer_wraps(tmp_path / "one")
    upload(
        client,
        "acme",
        (tmp_path / "one/CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
    )
    source = KeySource.objects.get(tenant=acme.tenant, kind=SourceKind.UPLOADED)
    client.post(reverse("keys:enable_source", args=["acme", source.pk]))
    byok_enable_run(source_id=str(source.pk))
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    return {
        "acme": acme,
        "client": client,
        "records": records,
        "folder": tmp_path,
        "source": source,
    }


def upload_the_same_key_again(client: Any, folder: Any) -> None:
    """The customer wraps the key kept in their key store with new parameters, and uploads it."""
    files = download(client, "acme", folder / "again")
    (folder / "again/CustomerKey.bin").write_bytes((folder / "one/CustomerKey.bin").read_bytes())
    customer_wraps(folder / "again", {2})
    upload(
        client,
        "acme",
        (folder / "again/CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
    )


def state(tenant: Tenant) -> str:
    tenant.refresh_from_db()
    return tenant.state


def test_revoke_destroys_the_uploaded_copy_and_the_same_key_restores(
    uploaded, django_capture_on_commit_callbacks
) -> None:
    acme, client, folder = uploaded["acme"], uploaded["client"], uploaded["folder"]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acme"})
    assert state(acme.tenant) == ServiceState.REVOKED
    version = uploaded["source"].versions.get()
    assert version.material is None  # Keyward's copy is gone
    refused = text(client.post(reverse("keys:restore", args=["acme"]), follow=True))
    assert "upload the same key again" in refused
    # The customer uploads the same key (kept in their key store) with new parameters.
    upload_the_same_key_again(client, folder)
    version.refresh_from_db()
    assert version.material  # restored under its old version
    assert AuditEvent.objects.filter(action="key.reupload").exists()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("keys:restore", args=["acme"]))
    assert state(acme.tenant) == ServiceState.BYOK_ACTIVE
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=uploaded["records"][0].pk)
    assert record_fields(acme.tenant, row)["sid"]


def test_revoking_an_uploaded_key_is_one_event_naming_the_copies_destroyed(uploaded) -> None:
    acme = uploaded["acme"]
    client = login(acme.key_admin, sudo=True)
    before = AuditEvent.objects.filter(tenant=acme.tenant).count()
    client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acme"})
    assert state(acme.tenant) == ServiceState.REVOKED
    (event,) = AuditEvent.objects.filter(tenant=acme.tenant).order_by("seq")[before:]
    assert (event.action, event.actor_id) == ("key.revoke", str(acme.key_admin.pk))
    assert event.details["copies_destroyed"] == ["upload-1"]
    assert uploaded["source"].versions.get().material is None


def test_destroy_is_scheduled_can_be_cancelled_and_then_shreds(uploaded) -> None:
    from objects.models import Location, StoredObject

    acme, client = uploaded["acme"], uploaded["client"]
    stored = StoredObject.objects.create(
        tenant=acme.tenant, key="report.pdf", location=Location.SHARED, size=3,
        ciphertext_size=80, sha256="ab" * 32, version="0" * 16,
        dek=DataKey.objects.get(tenant=acme.tenant, state=DekState.ACTIVE),
    )  # fmt: skip
    client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acme"})
    wrong = text(
        client.post(reverse("keys:destroy", args=["acme"]), {"confirm": "Acme"}, follow=True)
    )
    assert "Type the tenant's identifier, acme, to confirm." in wrong
    scheduled = text(
        client.post(reverse("keys:destroy", args=["acme"]), {"confirm": "acme"}, follow=True)
    )
    assert "The keys will be destroyed on" in scheduled
    acme.tenant.refresh_from_db()
    assert acme.tenant.destroy_after is not None
    assert acme.tenant.destroy_after - timezone.now() > timedelta(days=6)
    assert not tenant_destroy_due(tenant_id=str(acme.tenant.pk))  # not yet
    client.post(reverse("keys:cancel_destroy", args=["acme"]))
    acme.tenant.refresh_from_db()
    assert acme.tenant.destroy_after is None
    assert AuditEvent.objects.filter(action="key.destroy_cancelled").exists()

    client.post(reverse("keys:destroy", args=["acme"]), {"confirm": "acme"})
    Tenant.objects.filter(pk=acme.tenant.pk).update(
        destroy_after=timezone.now() - timedelta(seconds=1)
    )
    assert tenant_destroy_due(tenant_id=str(acme.tenant.pk))
    assert state(acme.tenant) == ServiceState.DESTROYED
    assert all(
        bytes(d.wrapped) == b"" and d.state == DekState.DESTROYED
        for d in DataKey.objects.filter(tenant=acme.tenant)
    )
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="key.destroyed").exists()
    # The lookup key and its keyed hashes go too.
    from records.models import IndexKey, LookupRow

    assert IndexKey.objects.filter(tenant=acme.tenant).exists()
    assert all(bytes(k.wrapped) == b"" for k in IndexKey.objects.filter(tenant=acme.tenant))
    assert not LookupRow.objects.filter(tenant=acme.tenant).exists()
    assert not KeySource.objects.filter(
        tenant=acme.tenant, sealed_credentials__isnull=False
    ).exists()
    # Objects keep their size, not the checksum that would confirm a guessed document.
    stored.refresh_from_db()
    assert stored.sha256 == "" and stored.size == 3
    assert not tenant_destroy_due(tenant_id=str(acme.tenant.pk))  # idempotent


@pytest.mark.parametrize("role", ["key_admin", "auditor", "viewer"])
def test_only_owners_destroy_or_remove(uploaded, role) -> None:
    acme = uploaded["acme"]
    client = login(getattr(acme, role), sudo=True)
    assert (
        client.post(reverse("keys:destroy", args=["acme"]), {"confirm": "acme"}).status_code == 403
    )
    assert client.post(reverse("keys:remove_byok", args=["acme"])).status_code == 403


def test_remove_byok_rewraps_under_the_vendor_key(uploaded) -> None:
    acme, client = uploaded["acme"], uploaded["client"]
    response = client.post(reverse("keys:remove_byok", args=["acme"]), follow=True)
    assert "Moving your data keys back" in text(response)
    assert state(acme.tenant) == ServiceState.MIGRATING_BACK
    assert byok_remove_run(tenant_id=str(acme.tenant.pk)) == "done"
    assert state(acme.tenant) == ServiceState.VENDOR_MANAGED
    kinds = set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__source__kind", flat=True
        )
    )
    assert kinds == {SourceKind.LOCAL}
    uploaded["source"].refresh_from_db()
    assert uploaded["source"].state == SourceState.RETIRED
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=uploaded["records"][0].pk)
    assert record_fields(acme.tenant, row)["sid"]


def test_no_data_key_rotation_while_paused(acme) -> None:
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.MIGRATING)
    with pytest.raises(KeyActionRefused, match="cannot be rotated while the tenant is Moving"):
        dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="test")


def test_a_job_whose_target_was_rotated_fails_and_a_new_one_can_start(acme) -> None:
    records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    first = dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="one")
    job = ReencryptionJob.objects.create(tenant=acme.tenant, target_dek=first, total=3)
    dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="two")
    envelope().forget(str(acme.tenant.pk))
    job = reencryption_run(job_id=str(job.pk))
    assert job.state == JobState.FAILED and "rotated while the job waited" in job.error
    assert AuditEvent.objects.filter(action="records.reencrypt.failed").exists()


def test_one_failing_tenant_does_not_stop_scheduled_rotation_of_others(
    acme, globex, monkeypatch
) -> None:
    import keys.tasks

    DataKey.objects.update(created=timezone.now() - timedelta(days=30))
    real = keys.tasks.dek_rotate_if_due

    def failing(*, tenant):
        if tenant.slug == "acme":
            raise RuntimeError("key store exploded")
        return real(tenant=tenant)

    monkeypatch.setattr(keys.tasks, "dek_rotate_if_due", failing)
    assert rotate_due_deks() == 1
    assert DataKey.objects.filter(tenant=globex.tenant).count() == 2


def test_a_new_upload_is_confirmed_and_rewrapped(
    uploaded, django_capture_on_commit_callbacks
) -> None:
    from django.core import mail

    from keys.services.rotation import kek_rewrap_run

    acme, client, folder = uploaded["acme"], uploaded["client"], uploaded["folder"]
    files = download(client, "acme", folder / "two")
    customer_wraps(folder / "two")
    with django_capture_on_commit_callbacks(execute=True):
        upload(
            client,
            "acme",
            (folder / "two/CustomerEncryptionKey.bin").read_bytes(),
            files["ImportToken.bin"],
        )
    assert state(acme.tenant) == ServiceState.ROTATION_PENDING
    assert any("confirm the new version" in m.subject for m in mail.outbox)
    review = text(client.get(reverse("keys:rotation", args=["acme"])))
    assert "upload-2" in review
    confirmed = text(client.post(reverse("keys:rotation_confirm", args=["acme"]), follow=True))
    assert "Confirmed" in confirmed
    assert kek_rewrap_run(source_id=str(uploaded["source"].pk)) == "done"
    assert state(acme.tenant) == ServiceState.BYOK_ACTIVE
    versions = set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    )
    assert versions == {"upload-2"}
    assert uploaded["source"].versions.get(provider_version="upload-1").state == "retired"
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=uploaded["records"][0].pk)
    assert record_fields(acme.tenant, row)["sid"]


def test_a_different_key_with_the_same_check_value_does_not_take_the_revoked_version(
    uploaded, django_capture_on_commit_callbacks
) -> None:
    """The check value is for people; a revoked version is given back only to a key
    that unwraps its data keys (two keys sharing a check value are told apart)."""
    client, folder = uploaded["client"], uploaded["folder"]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acme"})
    version = uploaded["source"].versions.get()
    # Another key whose check value collides with the revoked one's (as a search for
    # 5 bytes could find): simulated by giving the version that other key's value.
    other = folder / "other"
    files = download(client, "acme", other)
    customer_wraps(other, {1, 2})
    KekVersion.objects.filter(pk=version.pk).update(
        check_value=key_check_value((other / "CustomerKey.bin").read_bytes())
    )
    upload(
        client, "acme", (other / "CustomerEncryptionKey.bin").read_bytes(), files["ImportToken.bin"]
    )
    version.refresh_from_db()
    assert version.material is None  # not attached to the revoked version
    assert not AuditEvent.objects.filter(action="key.reupload").exists()
    # The right key still restores it.
    upload_the_same_key_again(client, folder)
    version.refresh_from_db()
    assert version.material
    assert AuditEvent.objects.filter(
        action="key.reupload", target=version.provider_version
    ).exists()
