"""A key on the customer's KMIP server: register, Save and Test, Encrypt, lifecycle.

Against PyKMIP's server with mutual TLS, started by `make test`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from crypto.envelope import KeyRevoked
from keys.models import DataKey, KekState, KeySource, SourceKind, SourceState
from keys.providers.base import KeyAccessDenied
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from keys.services.rotation import kek_rewrap_run
from keys.services.sources import byok_enable_run
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState
from tests.conftest import login
from tests.support import kmip

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")
PASSPHRASE = "correct horse battery staple"
ADMIN = Actor("user", "0", "key admin (tests)")


@pytest.fixture(autouse=True)
def _fresh_providers() -> None:
    reset_for_tests()


def files(
    ca: str | bytes | None = None,
    cert: str | bytes | None = None,
    key: str | bytes | None = None,
) -> dict[str, Any]:
    """Uploads for the form: paths, or bytes for a key made in the test."""
    out: dict[str, Any] = {}
    for name, value in (("ca_cert", ca), ("client_cert", cert), ("client_key", key)):
        if isinstance(value, bytes):
            from django.core.files.uploadedfile import SimpleUploadedFile

            out[name] = SimpleUploadedFile(f"{name}.pem", value)
        elif value is not None:
            out[name] = Path(value).open("rb")  # noqa: SIM115 (closed by the client)
    return out


def good_files() -> dict[str, Any]:
    return files(kmip.ca_cert(), kmip.client_cert(), kmip.client_key())


def save(client: Any, *, port: int | None = None, host: str | None = None, **extra: Any) -> Any:
    settings = kmip.kmip_settings()
    data = {
        "host": host if host is not None else settings.host,
        "port": port if port is not None else settings.port,
        "username": "",
        "password": "",
        "passphrase": "",
    }
    data.update(extra)
    return client.post(reverse("keys:kmip_save_and_test", args=["acme"]), data, follow=True)


def encrypted_client_key(passphrase: str) -> bytes:
    key = serialization.load_pem_private_key(Path(kmip.client_key()).read_bytes(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )


def source_of(tenant: Any) -> KeySource:
    return KeySource.objects.exclude(state__in=["retired", "revoked"]).get(
        tenant=tenant, kind=SourceKind.KMIP
    )


def test_the_page_offers_encrypt_only_after_a_passing_test(acme) -> None:
    body = login(acme.key_admin).get(reverse("keys:kmip", args=["acme"])).content.decode()
    assert "Save your settings and run the test first." in body
    assert 'data-testid="enable" disabled' in body


def test_good_settings_pass_show_the_server_and_enable_encrypt(acme) -> None:
    client = login(acme.key_admin, sudo=True)
    body = save(client, **good_files()).content.decode()
    assert "Every check passed." in body, body
    assert "Passed: Protocol versions" in body and "1.2" in body
    assert "Passed: Operations" in body and "Encrypt" in body
    assert 'data-testid="enable" disabled' not in body
    source = source_of(acme.tenant)
    assert source.state == SourceState.TESTED and source.test_passed
    # Secrets are sealed: the row holds no PEM and no private key in the clear.
    assert b"PRIVATE KEY" not in bytes(source.sealed_credentials or b"")
    assert "PRIVATE KEY" not in str(source.config)
    assert "keyward-test" in source.config["client_subject"]
    event = AuditEvent.objects.get(tenant=acme.tenant, action="key_source.register")
    assert "PRIVATE" not in str(event.details)


def test_a_passphrase_protected_key_works_with_its_passphrase(acme) -> None:
    client = login(acme.key_admin, sudo=True)
    uploads = files(kmip.ca_cert(), kmip.client_cert(), encrypted_client_key(PASSPHRASE))
    body = save(client, passphrase=PASSPHRASE, **uploads).content.decode()
    assert "Every check passed." in body


def bad_input_cases() -> list[tuple[str, Any, str, str]]:
    """(case, form data maker, field, message fragment)."""
    return [
        (
            "expired certificate",
            lambda: files(kmip.ca_cert(), kmip.expired_client_cert(), kmip.expired_client_key()),
            "client_cert",
            "expired",
        ),
        (
            "key of another certificate",
            lambda: files(kmip.ca_cert(), kmip.client_cert(), kmip.other_client_key()),
            "client_key",
            "does not match",
        ),
        (
            "wrong passphrase",
            lambda: (
                files(kmip.ca_cert(), kmip.client_cert(), encrypted_client_key(PASSPHRASE))
                | {"passphrase": "wrong"}
            ),
            "passphrase",
            "passphrase",
        ),
        (
            "no clientAuth",
            lambda: files(kmip.ca_cert(), kmip.no_client_auth_cert(), kmip.no_client_auth_key()),
            "client_cert",
            "client authentication",
        ),
        (
            "not a PEM",
            lambda: files(b"hello", kmip.client_cert(), kmip.client_key()),
            "ca_cert",
            "PEM",
        ),
        (
            "a client certificate as the CA",
            lambda: files(kmip.client_cert(), kmip.client_cert(), kmip.client_key()),
            "ca_cert",
            "CA",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "make", "field", "message"), bad_input_cases(), ids=[c[0] for c in bad_input_cases()]
)
def test_bad_uploads_are_refused_and_change_nothing(acme, case, make, field, message) -> None:
    client = login(acme.key_admin, sudo=True)
    response = save(client, **make())
    assert response.status_code == 400
    body = response.content.decode()
    assert f'data-testid="{field}-error"' in body, body
    assert message.lower() in body.lower()
    assert not KeySource.objects.filter(tenant=acme.tenant, kind=SourceKind.KMIP).exists()
    failure = AuditEvent.objects.get(tenant=acme.tenant, action="key_source.register")
    assert failure.outcome == "failure"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", []),
        ("127.0.0.1", ["globex:127.0.0.1/32"]),  # allowed to another tenant only
        ("10.0.0.1", ["127.0.0.1/32"]),
        ("169.254.169.254", ["127.0.0.1/32"]),
    ],
)
def test_hosts_inside_private_networks_are_refused(acme, settings, host, allowed) -> None:
    settings.KEYWARD_KMIP_ALLOWED_NETWORKS = allowed
    response = save(login(acme.key_admin, sudo=True), host=host, **good_files())
    assert response.status_code == 400
    assert 'data-testid="host-error"' in response.content.decode()
    assert not KeySource.objects.filter(tenant=acme.tenant, kind=SourceKind.KMIP).exists()
    assert AuditEvent.objects.get(action="key_source.register").outcome == "failure"


def test_a_network_allowed_to_this_tenant_only_is_reachable(acme, settings) -> None:
    settings.KEYWARD_KMIP_ALLOWED_NETWORKS = ["acme:127.0.0.1/32"]
    body = save(login(acme.key_admin, sudo=True), **good_files()).content.decode()
    assert "Every check passed." in body


def test_the_wrong_ca_fails_the_tls_check_naming_it_then_the_right_one_passes(acme) -> None:
    client = login(acme.key_admin, sudo=True)
    uploads = files(kmip.other_ca_cert(), kmip.client_cert(), kmip.client_key())
    body = save(client, **uploads).content.decode()
    assert "Failed: TLS connection" in body
    assert "certificate verify failed" in body or "not signed by the CA" in body
    assert 'data-testid="enable" disabled' in body
    assert AuditEvent.objects.get(action="key_source.test").outcome == "failure"

    # Only the CA is uploaded again: the saved client certificate and key are kept.
    body = save(client, **files(kmip.ca_cert())).content.decode()
    assert "Every check passed." in body, body
    assert 'data-testid="enable" disabled' not in body


def test_changed_settings_need_a_new_passing_test(acme) -> None:
    client = login(acme.owner, sudo=True)
    save(client, **good_files())
    source = source_of(acme.tenant)
    assert source.test_passed
    # A port with no KMIP server: saved, tested, failed; Encrypt is refused.
    body = save(client, port=1).content.decode()
    assert "Failed: TLS connection" in body
    response = client.post(reverse("keys:enable_source", args=["acme", source.pk]), follow=True)
    assert "Run Save and Test with these settings first" in response.content.decode()
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.VENDOR_MANAGED


@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_read_only_roles_cannot_register(acme, role) -> None:
    client = login(getattr(acme, role), sudo=True)
    assert client.get(reverse("keys:kmip", args=["acme"])).status_code == 403
    assert save(client, **good_files()).status_code == 403
    assert not KeySource.objects.filter(kind=SourceKind.KMIP).exists()


def enable(client: Any, tenant: Any) -> KeySource:
    body = save(client, **good_files()).content.decode()
    assert "Every check passed." in body, body
    source = source_of(tenant)
    response = client.post(reverse("keys:enable_source", args=["acme", source.pk]), follow=True)
    assert "Moving your data keys under your key" in response.content.decode()
    byok_enable_run(source_id=str(source.pk))  # the Celery task's body
    source.refresh_from_db()
    return source


def test_encrypt_creates_a_key_on_the_server_and_moves_every_dek_under_it(acme) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(10)))
    source = enable(login(acme.owner, sudo=True), acme.tenant)
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    assert source.state == SourceState.ACTIVE
    uid = source.config["key_uid"]
    with kmip.kmip_client() as server:
        _, attributes = server.get_attributes(uid, ["State", "Cryptographic Length"])
        found = {a.attribute_name.value: a.attribute_value.value for a in attributes}
    assert found["State"] == kmip.enums.State.ACTIVE
    assert found["Cryptographic Length"] == 256
    for dek in DataKey.objects.filter(tenant=acme.tenant).select_related("kek_version"):
        assert dek.kek_version.source_id == source.pk
        assert dek.kek_version.provider_version == uid

    # A restart: no cached provider or DEK; the stored identifier is enough.
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=records[0].pk)
    assert record_fields(acme.tenant, row)["sid"].startswith("S-1-5-21-")
    assert key_health_check(tenant=acme.tenant) == "ok"

    # The customer revokes the key on their server: access is cut.
    with kmip.kmip_client() as server:
        server.revoke(kmip.enums.RevocationReasonCode.KEY_COMPROMISE, uid)
    assert key_health_check(tenant=acme.tenant) == "revoked"
    reset_for_tests()
    # Refused by the key store, or before it is asked when this process already
    # reads the revoke from the database: either way nothing decrypts.
    with pytest.raises((KeyAccessDenied, KeyRevoked)):
        record_fields(acme.tenant, row)


def test_forced_rotation_makes_a_new_key_that_is_confirmed_then_rewrapped(acme) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(5)))
    client = login(acme.owner, sudo=True)
    source = enable(client, acme.tenant)
    old_uid = source.config["key_uid"]

    body = client.post(reverse("keys:rotate_kek", args=["acme"]), follow=True).content.decode()
    assert "A new key was made in your key store" in body
    acme.tenant.refresh_from_db()
    assert acme.tenant.state == ServiceState.ROTATION_PENDING
    pending = source.versions.get(state=KekState.PENDING)
    assert pending.provider_version != old_uid

    client.post(reverse("keys:rotation_confirm", args=["acme"]), follow=True)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    acme.tenant.refresh_from_db()
    source.refresh_from_db()
    assert acme.tenant.state == ServiceState.BYOK_ACTIVE
    assert source.config["key_uid"] == pending.provider_version
    assert set(
        DataKey.objects.filter(tenant=acme.tenant).values_list(
            "kek_version__provider_version", flat=True
        )
    ) == {pending.provider_version}
    reset_for_tests()
    row = Record.objects.select_related("sealed").get(pk=records[0].pk)
    assert record_fields(acme.tenant, row)["sid"].startswith("S-1-5-21-")


def test_a_forced_rotation_is_one_event_naming_the_person_and_the_new_key(acme) -> None:
    client = login(acme.key_admin, sudo=True)
    source = enable(client, acme.tenant)
    before = AuditEvent.objects.filter(tenant=acme.tenant).count()
    client.post(reverse("keys:rotate_kek", args=["acme"]))
    (event,) = AuditEvent.objects.filter(tenant=acme.tenant).order_by("seq")[before:]
    pending = source.versions.get(state=KekState.PENDING)
    assert (event.action, event.actor_id, event.target) == (
        "kek.rotate_now",
        str(acme.key_admin.pk),
        pending.provider_version,
    )
    assert event.details["to"] == ServiceState.ROTATION_PENDING
    history = client.get(reverse("keys:rotation", args=["acme"])).content.decode()
    assert "kek.rotate_now" in history


def test_a_refused_enable_leaves_no_key_behind_on_the_server(acme, monkeypatch) -> None:
    import keys.services.sources
    from keys.errors import KeyActionRefused
    from keys.providers.kmip import KmipProvider
    from keys.services.sources import byok_enable
    from tenants.models import Tenant

    save(login(acme.owner, sudo=True), **good_files())
    source = source_of(acme.tenant)
    made: list[str] = []
    real_prepare = KmipProvider.prepare_enable

    def prepare(self: KmipProvider) -> dict[str, str]:
        prepared = real_prepare(self)
        made.append(prepared["key_uid"])
        return prepared

    real_start = keys.services.sources._byok_enable_start

    def racing(tenant: Any, *args: Any) -> Any:
        # Another administrator's Enable wins between our checks and our lock.
        Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.MIGRATING)
        return real_start(tenant, *args)

    monkeypatch.setattr(KmipProvider, "prepare_enable", prepare)
    monkeypatch.setattr(keys.services.sources, "_byok_enable_start", racing)
    with pytest.raises(KeyActionRefused):
        byok_enable(tenant=acme.tenant, source=source, actor=ADMIN)
    [uid] = made
    with kmip.kmip_client() as server:
        try:
            _, attributes = server.get_attributes(uid, ["State"])
        except kmip.KmipOperationFailure:
            return  # destroyed and gone
    assert attributes[0].attribute_value.value == kmip.enums.State.DESTROYED
