"""Old-format wrapped keys (KMIP version 1, unsigned Key Vault blobs) rewrapped in
place by the format-upgrade task, against the real KMIP and Key Vault test servers."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, KeySource
from keys.providers.azure_keyvault.wrapping import encoded_context, tag_for
from keys.providers.base import KeyMaterialInvalid
from keys.registry import provider_for
from keys.runtime import dek_context, reset_for_tests
from keys.services.formats import stored_blobs, wrapped_formats_upgrade
from keys.tasks import rewrap_old_formats
from records.indexkeys import forget_cached_keys, index_context, key_material
from records.models import IndexKey, Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tests.conftest import login
from tests.keys import test_azure_source as azure_pages
from tests.keys import test_kmip_source as kmip_pages
from tests.support.kmip import legacy_cbc_blob

pytestmark = pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")
SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fresh_envelope() -> Any:
    reset_for_tests()
    yield
    reset_for_tests()


def _blobs(tenant: Tenant) -> dict[tuple[str, int], bytes]:
    """The tenant's wrapped keys that still hold one (retired ones hold none)."""
    deks = DataKey.objects.filter(tenant=tenant).exclude(wrapped=b"")
    keys = IndexKey.objects.filter(tenant=tenant).exclude(wrapped=b"")
    return {
        **{("dek", d.pk): bytes(d.wrapped) for d in deks},
        **{("index", k.pk): bytes(k.wrapped) for k in keys},
    }


def _make_old(tenant: Tenant, source: KeySource, old: Any) -> int:
    """Rewrite every blob under `source` as Keyward wrote it before (`old(dek, context,
    blob, version)`); how many."""
    provider = provider_for(source)
    made = 0
    for dek_row in DataKey.objects.filter(tenant=tenant, kek_version__source=source).exclude(
        wrapped=b""
    ):
        context = dek_context(str(tenant.pk), dek_row.version)
        version = dek_row.kek_version.provider_version
        dek = provider.unwrap(bytes(dek_row.wrapped), context, version)
        dek_row.wrapped = old(dek, context, bytes(dek_row.wrapped), version)
        dek_row.save(update_fields=["wrapped"])
        made += 1
    for key in IndexKey.objects.filter(tenant=tenant, kek_version__source=source).exclude(
        wrapped=b""
    ):
        context = index_context(str(tenant.pk), key.version)
        version = key.kek_version.provider_version
        material = provider.unwrap(bytes(key.wrapped), context, version)
        key.wrapped = old(material, context, bytes(key.wrapped), version)
        key.save(update_fields=["wrapped"])
        made += 1
    reset_for_tests()
    forget_cached_keys()
    return made


def _all_readable(tenant: Tenant, records: list[Record]) -> None:
    reset_for_tests()
    forget_cached_keys()
    for row in Record.objects.filter(pk__in=[r.pk for r in records]).select_related("sealed"):
        assert record_fields(tenant, row)["sid"]
    for key in IndexKey.objects.filter(tenant=tenant).exclude(wrapped=b""):
        assert len(key_material(key)) == 32


def test_kmip_version_1_blobs_are_rewrapped_in_place_and_a_rerun_does_nothing(acme) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(12)))
    source = kmip_pages.enable(login(acme.owner, sudo=True), acme.tenant)
    provider = provider_for(source)
    made = _make_old(
        acme.tenant,
        source,
        lambda dek, context, _blob, _version: legacy_cbc_blob(provider, dek, context),
    )
    assert made >= 2  # a DEK and the lookup key at least
    old = _blobs(acme.tenant)
    assert all(provider.needs_rewrap(b) for b in old.values())
    _all_readable(acme.tenant, records)  # version 1 reads until it is rewrapped

    report = wrapped_formats_upgrade(actor=SYSTEM)

    assert report.rewrapped["acme"] == made and not report.left
    new = _blobs(acme.tenant)
    for name, blob in new.items():
        assert blob[0] == 3 and blob != old[name], name
    # The KEK version did not change: the same key on the customer's server.
    assert {d.kek_version.provider_version for d in DataKey.objects.filter(tenant=acme.tenant)} == {
        source.config["key_uid"]
    }
    _all_readable(acme.tenant, records)
    event = AuditEvent.objects.get(tenant=acme.tenant, action="kek.reformat")
    assert event.details == {"rewrapped": made, "left": 0} and event.outcome == "success"
    assert rewrap_old_formats() == 0  # the beat's task: nothing left
    assert _blobs(acme.tenant) == new


def _unsigned(provider: Any) -> Any:
    def old(dek: bytes, context: dict[str, str], blob: bytes, _version: str) -> bytes:
        ciphertext = blob[5:-64]  # version 2: 0x02, origin version, RSA, tag, origin MAC
        return b"\x01" + ciphertext + tag_for(dek, encoded_context(context), ciphertext)

    return old


def test_unsigned_key_vault_blobs_are_signed_then_the_source_refuses_unsigned(acme, azure) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(12)))
    source = azure_pages.enable(login(acme.owner, sudo=True), azure, acme.tenant)
    # A registration from before signing: it reads unsigned blobs, and all of its
    # blobs are unsigned.
    legacy_config = {k: v for k, v in source.config.items() if k != "wraps_signed"}
    KeySource.objects.filter(pk=source.pk).update(config=legacy_config)
    source.refresh_from_db()
    made = _make_old(acme.tenant, source, _unsigned(provider_for(source)))
    assert made >= 2
    _all_readable(acme.tenant, records)
    unwraps_before = len(azure.server.requests_for("unwrapkey"))

    out = StringIO()
    call_command("rewrap_old_formats", stdout=out)

    assert f"acme: {made} rewrapped, 0 left" in out.getvalue()
    assert "1 Key Vault source(s) now refuse unsigned blobs" in out.getvalue()
    # Each unsigned blob was opened once by Key Vault, then signed.
    assert len(azure.server.requests_for("unwrapkey")) - unwraps_before == made
    for blob in _blobs(acme.tenant).values():
        assert blob[:1] == b"\x02"
    source.refresh_from_db()
    assert source.config["wraps_signed"] == "true" and source.test_passed
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="key.wraps_signed").count() == 1
    _all_readable(acme.tenant, records)
    # From now on an unsigned blob, the kind anyone with the public key can make, is refused.
    dek_row = DataKey.objects.filter(tenant=acme.tenant).first()
    assert dek_row is not None
    context = dek_context(str(acme.tenant.pk), dek_row.version)
    version = dek_row.kek_version.provider_version
    strict = provider_for(source)
    forged = _unsigned(strict)(
        strict.unwrap(bytes(dek_row.wrapped), context, version),
        context,
        bytes(dek_row.wrapped),
        version,
    )
    with pytest.raises(KeyMaterialInvalid, match="not a DEK wrapped by Keyward"):
        strict.unwrap(forged, context, version)


def test_a_revoked_tenant_is_not_unwrapped_and_a_failing_store_leaves_blobs_for_later(
    acme, globex, azure
) -> None:
    records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    source = azure_pages.enable(login(acme.owner, sudo=True), azure, acme.tenant)
    legacy_config = {k: v for k, v in source.config.items() if k != "wraps_signed"}
    KeySource.objects.filter(pk=source.pk).update(config=legacy_config)
    source.refresh_from_db()
    _make_old(acme.tenant, source, _unsigned(provider_for(source)))
    old = _blobs(acme.tenant)
    unwraps_before = len(azure.server.requests_for("unwrapkey"))

    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.REVOKED)
    report = wrapped_formats_upgrade(actor=SYSTEM)
    assert "acme" not in report.rewrapped and report.signed_sources == 0
    assert len(azure.server.requests_for("unwrapkey")) == unwraps_before  # never asked
    assert _blobs(acme.tenant) == old

    # Service running again, but the customer's key is disabled: nothing is
    # written, the failure is audited, and the source keeps reading version 1.
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.BYOK_ACTIVE)
    azure.server.set_enabled(azure.key_name, False)
    report = wrapped_formats_upgrade(actor=SYSTEM)
    assert report.rewrapped["acme"] == 0 and report.left["acme"] == len(old)
    assert _blobs(acme.tenant) == old
    failed = AuditEvent.objects.get(tenant=acme.tenant, action="kek.reformat")
    assert failed.outcome == "failure" and "data key" in failed.reason
    source.refresh_from_db()
    assert "wraps_signed" not in source.config

    azure.server.set_enabled(azure.key_name, True)
    report = wrapped_formats_upgrade(actor=SYSTEM)
    assert report.rewrapped["acme"] == len(old) and report.signed_sources == 1
    assert all(b[:1] == b"\x02" for b in _blobs(acme.tenant).values())


def test_every_stored_blob_is_listed_once(acme) -> None:
    records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    listed = stored_blobs(acme.tenant)
    assert sorted(item.what for item in listed) == ["data key", "lookup key"]
    assert {item.blob for item in listed} == set(_blobs(acme.tenant).values())
