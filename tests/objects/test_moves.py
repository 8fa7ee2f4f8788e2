"""Enabling and removing BYOK move the tenant's objects with its key (objects/moves.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.errors import KeyActionRefused
from keys.models import DataKey, DekState, KeySource, SourceKind
from keys.runtime import reset_for_tests
from keys.services.lifecycle import byok_remove_run, tenant_remove_byok
from keys.services.registration import KmipEntry, kmip_register
from keys.services.sources import byok_enable, byok_enable_run, key_source_test
from objects import keyring, locations
from objects.migration import migration_run
from objects.models import Location, MigrationState, ObjectMigration, StoredObject
from objects.moves import objects_move_retry
from objects.services import object_open, object_put
from records.fields import NewRecord
from records.indexkeys import forget_cached_keys, records_lookup
from records.models import IndexKey
from records.services import records_create
from tenants.models import ServiceState, Tenant
from tests.support import kmip

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")
SYSTEM = Actor.system("tests")
ADMIN = Actor("user", "0", "key admin (tests)")


@pytest.fixture(autouse=True)
def _objects(settings: Any, tmp_path: Path) -> Iterator[None]:
    settings.KEYWARD_OBJECT_STORE = "filesystem"
    settings.KEYWARD_OBJECT_ROOT = tmp_path / "objects"
    locations.forget()
    keyring.forget()
    reset_for_tests()
    yield
    locations.forget()
    keyring.forget()


def state(tenant: Tenant) -> str:
    return str(Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk))


def put_objects(tenant: Tenant, count: int) -> dict[str, str]:
    sums = {}
    for n in range(count):
        data = f"object {n} of {tenant.slug} ".encode() * 50
        object_put(tenant=tenant, key=f"reports/{n:03}.txt", chunks=[data])
        sums[f"reports/{n:03}.txt"] = hashlib.sha256(data).hexdigest()
    return sums


def read_all(tenant: Tenant) -> dict[str, str]:
    out = {}
    for key in StoredObject.objects.filter(tenant=tenant).values_list("key", flat=True):
        _, chunks = object_open(tenant=tenant, key=key)
        out[key] = hashlib.sha256(b"".join(chunks)).hexdigest()
    return out


def enable_kmip(tenant: Tenant, captured: Any) -> KeySource:
    server = kmip.kmip_settings()
    source = kmip_register(
        tenant=tenant,
        entry=KmipEntry(
            host=server.host,
            port=server.port,
            username="",
            password=None,
            ca_pem=Path(kmip.ca_cert()).read_bytes(),
            cert_pem=Path(kmip.client_cert()).read_bytes(),
            key_pem=Path(kmip.client_key()).read_bytes(),
            passphrase=None,
        ),
        actor=SYSTEM,
    )
    source = key_source_test(source=source, actor=SYSTEM)
    assert source.test_passed, source.test_results
    byok_enable(tenant=tenant, source=source, actor=ADMIN)
    with captured(execute=False):  # the tasks these would send are run by hand below
        byok_enable_run(source_id=str(source.pk))
    return source


def run_open_migration(tenant: Tenant, captured: Any) -> ObjectMigration:
    migration = ObjectMigration.objects.filter(tenant=tenant).latest("started")
    with captured(execute=True):  # sends migration_finished, as a worker would
        migration_run(str(migration.pk))
    migration.refresh_from_db()
    return migration


def test_enable_moves_the_objects_to_dedicated_storage_then_activates(
    acme, django_capture_on_commit_callbacks
) -> None:
    tenant = acme.tenant
    sums = put_objects(tenant, 12)
    source = enable_kmip(tenant, django_capture_on_commit_callbacks)

    # The data keys are under the customer's key; the objects still have to move.
    assert state(tenant) == ServiceState.MIGRATING
    source.refresh_from_db()
    assert source.state == "active"
    object_dek = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    assert object_dek.kek_version.source_id == source.pk
    assert read_all(tenant) == sums  # reads keep serving from the shared location

    migration = run_open_migration(tenant, django_capture_on_commit_callbacks)
    assert migration.state == MigrationState.DONE
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    assert set(StoredObject.objects.filter(tenant=tenant).values_list("location", flat=True)) == {
        Location.DEDICATED
    }
    assert set(StoredObject.objects.filter(tenant=tenant).values_list("dek_id", flat=True)) == {
        object_dek.pk
    }
    reset_for_tests()
    keyring.forget()
    assert read_all(tenant) == sums
    assert AuditEvent.objects.filter(tenant=tenant, action="byok.enabled").exists()

    # Removal moves them back under a new vendor-managed data key.
    with django_capture_on_commit_callbacks(execute=False):
        tenant_remove_byok(tenant=tenant, actor=ADMIN)
        assert byok_remove_run(tenant_id=str(tenant.pk)) == "moving"
    assert state(tenant) == ServiceState.MIGRATING_BACK
    back = run_open_migration(tenant, django_capture_on_commit_callbacks)
    assert back.state == MigrationState.DONE
    assert state(tenant) == ServiceState.VENDOR_MANAGED
    assert set(StoredObject.objects.filter(tenant=tenant).values_list("location", flat=True)) == {
        Location.SHARED
    }
    vendor_dek = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    assert vendor_dek.kek_version.source.kind == SourceKind.LOCAL
    reset_for_tests()
    keyring.forget()
    assert read_all(tenant) == sums


def test_a_tenant_without_objects_is_active_at_once(acme, django_capture_on_commit_callbacks):
    enable_kmip(acme.tenant, django_capture_on_commit_callbacks)
    assert state(acme.tenant) == ServiceState.BYOK_ACTIVE
    assert not ObjectMigration.objects.filter(tenant=acme.tenant).exists()


def test_lookup_keys_move_with_the_data_keys(acme, django_capture_on_commit_callbacks) -> None:
    tenant = acme.tenant
    [record] = records_create(
        tenant=tenant,
        items=[NewRecord("user", "u-1", {"email": "Ada@Example.com", "name": "Ada"})],
    )
    source = enable_kmip(tenant, django_capture_on_commit_callbacks)
    key = IndexKey.objects.select_related("kek_version__source").get(tenant=tenant)
    assert key.kek_version.source_id == source.pk  # only the customer's key opens it now
    forget_cached_keys()
    reset_for_tests()
    found = records_lookup(tenant=tenant, field="email", value="ada@example.com")
    assert list(found.values_list("pk", flat=True)) == [record.pk]

    with django_capture_on_commit_callbacks(execute=False):
        tenant_remove_byok(tenant=tenant, actor=ADMIN)
        assert byok_remove_run(tenant_id=str(tenant.pk)) == "done"
    key.refresh_from_db()
    assert key.kek_version.source.kind == SourceKind.LOCAL


def test_a_lost_finish_signal_is_made_up_by_the_resumed_run(
    acme, django_capture_on_commit_callbacks
) -> None:
    tenant = acme.tenant
    put_objects(tenant, 3)
    source = enable_kmip(tenant, django_capture_on_commit_callbacks)
    migration = ObjectMigration.objects.get(tenant=tenant)
    with django_capture_on_commit_callbacks(execute=False):  # the worker dies: no signal
        migration_run(str(migration.pk))
    assert state(tenant) == ServiceState.MIGRATING
    with django_capture_on_commit_callbacks(execute=False):
        byok_enable_run(source_id=str(source.pk))  # what the beat's resume job sends
    assert state(tenant) == ServiceState.BYOK_ACTIVE


def test_a_failed_move_keeps_the_tenant_paused_until_retried(
    acme, django_capture_on_commit_callbacks
) -> None:
    tenant = acme.tenant
    sums = put_objects(tenant, 4)
    source = enable_kmip(tenant, django_capture_on_commit_callbacks)
    with pytest.raises(KeyActionRefused):
        objects_move_retry(tenant=tenant, actor=SYSTEM)  # nothing failed yet
    migration = ObjectMigration.objects.get(tenant=tenant)
    ObjectMigration.objects.filter(pk=migration.pk).update(
        state=MigrationState.FAILED, error="verification failed (test)"
    )
    with django_capture_on_commit_callbacks(execute=False):
        byok_enable_run(source_id=str(source.pk))
    assert state(tenant) == ServiceState.MIGRATING  # failed: waits for a person
    with django_capture_on_commit_callbacks(execute=False):
        objects_move_retry(tenant=tenant, actor=SYSTEM)
    retried = run_open_migration(tenant, django_capture_on_commit_callbacks)
    assert retried.pk != migration.pk and retried.state == MigrationState.DONE
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    assert read_all(tenant) == sums


def test_a_dek_that_objects_depend_on_is_never_retired(acme) -> None:
    from keys.services.deks import dek_retire_unused, dek_rotate

    tenant = acme.tenant
    put_objects(tenant, 2)
    first = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    assert dek_retire_unused(tenant=tenant) == []  # no records, but objects use it
    first.refresh_from_db()
    assert first.state == DekState.RETIRING and bytes(first.wrapped)
    assert len(read_all(tenant)) == 2
