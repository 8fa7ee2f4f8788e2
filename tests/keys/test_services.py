from __future__ import annotations

import base64
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from crypto.envelope import KeyRevoked
from keys.errors import KeyActionRefused
from keys.models import DataKey, DekState, KekState, KekVersion, KeySource
from keys.rootkey import root_key_file
from keys.runtime import RedisStateSource, envelope, envelope_state_source, reset_for_tests
from keys.services.deks import dek_rotate, kek_rewrap_vendor_deks, tenant_set_dek_cache_ttl
from keys.tasks import rotate_due_deks
from records.models import Record, SealedFields
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.conftest import login

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


@pytest.fixture
def tenant(db) -> Tenant:
    return tenant_create(name="Initech", slug="initech", actor=SYSTEM)


def load(tenant: Tenant, n: int, prefix: str = "") -> list[Record]:
    return records_create(tenant=tenant, items=list(synthetic_records(n, prefix=prefix)))


def test_a_new_tenant_is_vendor_managed_with_its_first_dek(tenant: Tenant) -> None:
    source = KeySource.objects.get(tenant=tenant)
    assert source.kind == "local" and source.state == "active"
    dek = DataKey.objects.get(tenant=tenant)
    assert dek.version == 1 and dek.state == DekState.ACTIVE
    assert dek.kek_version.provider_version.startswith("root-")
    assert len(bytes(dek.wrapped)) == 4 + 12 + 32 + 16  # only the wrapped form is stored
    assert AuditEvent.objects.filter(tenant=tenant, action="dek.create").exists()


def test_records_round_trip_through_the_envelope(tenant: Tenant) -> None:
    records = load(tenant, 10)
    fields = record_fields(tenant, Record.objects.get(pk=records[1].pk))
    assert fields["email"].endswith("@example.com")
    stored = bytes(Record.objects.get(pk=records[1].pk).sealed.pii)
    assert fields["email"].encode() not in stored


def test_rotation_makes_new_writes_use_the_new_dek_and_old_data_still_reads(
    tenant: Tenant, django_capture_on_commit_callbacks
) -> None:
    old = load(tenant, 4, "a-")
    with django_capture_on_commit_callbacks(execute=True):  # publishes the new key state
        new_dek = dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))  # this process: no waiting for the state interval
    new = load(tenant, 4, "b-")
    assert {r.sealed.dek_id for r in new} == {new_dek.pk}
    assert {r.sealed.dek_id for r in old} != {new_dek.pk}
    for row in Record.objects.filter(tenant=tenant):
        assert record_fields(tenant, row)["sid"].startswith("S-1-5-21-")
    versions = dict(DataKey.objects.filter(tenant=tenant).values_list("version", "state"))
    assert versions == {1: DekState.RETIRING, 2: DekState.ACTIVE}
    event = AuditEvent.objects.get(tenant=tenant, action="dek.rotate")
    assert event.details["from_version"] == 1 and event.details["to_version"] == 2


def test_rotation_is_refused_for_a_revoked_tenant(tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.REVOKED)
    with pytest.raises(KeyActionRefused, match="cannot be rotated while the tenant is Revoked"):
        dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    assert DataKey.objects.filter(tenant=tenant).count() == 1


def test_a_revoked_tenant_decrypts_nothing(tenant: Tenant) -> None:
    records = load(tenant, 2)
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.REVOKED, key_epoch=1)
    source = envelope_state_source()
    assert isinstance(source, RedisStateSource)
    source.publish(str(tenant.pk))
    envelope().forget(str(tenant.pk))
    with pytest.raises(KeyRevoked):
        record_fields(tenant, records[0])


def test_scheduled_rotation_rotates_only_due_tenants(tenant: Tenant) -> None:
    other = tenant_create(name="Fresh", slug="fresh", actor=SYSTEM)
    DataKey.objects.filter(tenant=tenant).update(created=timezone.now() - timedelta(days=8))
    assert rotate_due_deks() == 1
    assert DataKey.objects.filter(tenant=tenant).count() == 2
    assert DataKey.objects.filter(tenant=other).count() == 1
    assert rotate_due_deks() == 0  # idempotent: the new DEK is not due


def test_scheduled_rotation_holds_for_paused_tenants(tenant: Tenant) -> None:
    DataKey.objects.filter(tenant=tenant).update(created=timezone.now() - timedelta(days=30))
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.ROTATION_PENDING)
    assert rotate_due_deks() == 0


@pytest.mark.parametrize("ttl", [9, 86401, 0, -5])
def test_cache_ttl_out_of_bounds_changes_nothing(tenant: Tenant, ttl: int) -> None:
    with pytest.raises(ValidationError, match="Choose between 10 seconds and 24 hours"):
        tenant_set_dek_cache_ttl(tenant=tenant, ttl=ttl, actor=SYSTEM)
    tenant.refresh_from_db()
    assert tenant.dek_cache_ttl == 300


def test_shortening_the_ttl_bumps_the_epoch(tenant: Tenant) -> None:
    tenant_set_dek_cache_ttl(tenant=tenant, ttl=60, actor=SYSTEM)
    tenant.refresh_from_db()
    assert (tenant.dek_cache_ttl, tenant.key_epoch) == (60, 1)
    tenant_set_dek_cache_ttl(tenant=tenant, ttl=600, actor=SYSTEM)
    tenant.refresh_from_db()
    assert tenant.key_epoch == 1  # lengthening needs no drop


def test_root_key_rotation_then_rewrap_moves_every_vendor_dek(tenant: Tenant) -> None:
    records = load(tenant, 3)
    other = tenant_create(name="Other", slug="other", actor=SYSTEM)
    before = {d.pk: bytes(d.wrapped) for d in DataKey.objects.all()}
    out = StringIO()
    call_command("rotate_root_key", stdout=out)
    newest = f"root-{root_key_file().versions()[-1]}"
    assert newest in out.getvalue()
    call_command("rewrap_data_keys", stdout=StringIO())
    for dek in DataKey.objects.select_related("kek_version"):
        assert dek.kek_version.provider_version == newest
        assert bytes(dek.wrapped) != before[dek.pk]
    from records.models import IndexKey  # lookup keys follow the root key too

    assert IndexKey.objects.filter(tenant=tenant).exists()
    assert {k.kek_version.provider_version for k in IndexKey.objects.all()} == {newest}
    old_versions = KekVersion.objects.exclude(provider_version=newest)
    assert old_versions.exists() and all(v.state == KekState.RETIRED for v in old_versions)
    reset_for_tests()
    assert record_fields(tenant, Record.objects.get(pk=records[0].pk))["sid"]
    assert AuditEvent.objects.filter(tenant=other, action="kek.rewrap").exists()
    assert kek_rewrap_vendor_deks(actor=SYSTEM) == {}  # a rerun has nothing left to do


def test_a_ciphertext_moved_to_another_tenant_does_not_decrypt(tenant: Tenant) -> None:
    from crypto.ciphertext import CiphertextError

    other = tenant_create(name="Other", slug="other", actor=SYSTEM)
    row = load(tenant, 1)[0]
    with pytest.raises(CiphertextError, match="unknown for this tenant"):
        envelope().decrypt(str(other.pk), row.kind, "pii", str(row.uid), bytes(row.sealed.pii))
    other_row = load(other, 1, "o-")[0]
    moved = Record(uid=other_row.uid, tenant=other, kind=other_row.kind)
    moved.sealed = SealedFields(record=moved, dek_id=row.sealed.dek_id, pii=row.sealed.pii)
    with pytest.raises(CiphertextError):
        record_fields(other, moved)


def test_admin_shows_key_metadata_read_only(tenant: Tenant, admin_user) -> None:
    # A superuser's session has passed the second factor, as every staff sign-in must.
    admin_client = login(admin_user)
    dek = DataKey.objects.get(tenant=tenant)
    page = admin_client.get(f"/admin/keys/datakey/{dek.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    wrapped = bytes(dek.wrapped)
    assert wrapped.hex() not in body and base64.b64encode(wrapped).decode() not in body
    assert admin_client.post(f"/admin/keys/datakey/{dek.pk}/delete/").status_code == 403
