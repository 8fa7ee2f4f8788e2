"""Vendor root key rotation from end to end: rotate, rewrap everything, retire.

Every kind of thing that depends on a root key version is made under the first
one: vendor-managed DEKs and lookup keys, a customer's Key Vault credentials
and its blobs' origin signatures (against the Key Vault test server), an
uploaded key's material (wrapped by the customer with OpenSSL) and an open
import's private key.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from audit.services import Actor
from keys.credentials import credentials_of
from keys.errors import KeyActionRefused
from keys.models import DataKey, ImportState, KekState, KekVersion, KeyImport, KeySource, SourceKind
from keys.registry import provider_for
from keys.rootkey import root_key_file
from keys.runtime import reset_for_tests
from keys.selectors.sources import uploaded_material
from keys.services.rootkeys import root_key_dependents, root_key_retire
from records.indexkeys import forget_cached_keys, key_material
from records.models import IndexKey, Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tests.conftest import login
from tests.keys import test_azure_source as azure_pages
from tests.keys import test_upload as upload_pages

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _own_root_key_file(settings: Any, tmp_path: Path) -> Any:
    """A root key file for this test alone: retiring a version must not reach others."""
    settings.KEYWARD_ROOT_KEY_FILE = str(tmp_path / "root" / "root-keys.json")
    reset_for_tests()
    yield
    reset_for_tests()


def _readable(tenant: Any, records: list[Record]) -> None:
    reset_for_tests()
    forget_cached_keys()
    for row in Record.objects.filter(pk__in=[r.pk for r in records]).select_related("sealed"):
        assert record_fields(tenant, row)["sid"]
    for key in IndexKey.objects.filter(tenant=tenant).exclude(wrapped=b""):
        assert len(key_material(key)) == 32


def _names_root(label: str) -> list[str]:
    """Every stored value that still names root key version `label`."""
    found = [
        f"credentials of {s.pk}"
        for s in KeySource.objects.filter(sealed_credentials_root=label).exclude(
            sealed_credentials=None
        )
    ]
    found += [
        f"material of {v.provider_version}"
        for v in KekVersion.objects.exclude(material=None)
        if bytes(v.material or b"").startswith(label.encode() + b"\0")
    ]
    found += [
        f"import {i.pk}"
        for i in KeyImport.objects.filter(private_kek_version=label).exclude(private_wrapped=b"")
    ]
    number = int(label.removeprefix("root-"))
    for dek in DataKey.objects.exclude(wrapped=b"").select_related("kek_version__source"):
        source = dek.kek_version.source
        if dek.kek_version.provider_version == label or (
            source.kind != SourceKind.LOCAL
            and provider_for(source).vendor_root_version(bytes(dek.wrapped)) == number
        ):
            found.append(f"DEK {dek.pk}")
    for key in IndexKey.objects.exclude(wrapped=b"").select_related("kek_version__source"):
        source = key.kek_version.source
        if key.kek_version.provider_version == label or (
            source.kind != SourceKind.LOCAL
            and provider_for(source).vendor_root_version(bytes(key.wrapped)) == number
        ):
            found.append(f"lookup key {key.pk}")
    return found


def test_rotate_rewrap_retire_leaves_nothing_under_the_old_version(
    acme, globex, azure, tmp_path
) -> None:
    assert root_key_file().versions() == [1]
    # acme: its own key in Key Vault (credentials sealed, blobs signed by the vendor).
    acme_records = records_create(tenant=acme.tenant, items=list(synthetic_records(8)))
    azure_source = azure_pages.enable(login(acme.owner, sudo=True), azure, acme.tenant)
    # globex: vendor-managed data, an uploaded key waiting to be enabled, an open import.
    globex_records = records_create(
        tenant=globex.tenant, items=list(synthetic_records(8, prefix="g-"))
    )
    client = login(globex.owner, sudo=True)
    files = upload_pages.download(client, "globex", tmp_path / "first")
    upload_pages.customer_wraps(tmp_path / "first")
    body = upload_pages.upload(
        client,
        "globex",
        (tmp_path / "first" / "CustomerEncryptionKey.bin").read_bytes(),
        files["ImportToken.bin"],
    ).content.decode()
    assert "Its key check value is" in body
    uploaded = KekVersion.objects.get(
        source__tenant=globex.tenant, source__kind=SourceKind.UPLOADED
    )
    customer_key = (tmp_path / "first" / "CustomerKey.bin").read_bytes()
    second = upload_pages.download(client, "globex", tmp_path / "second")
    assert KeyImport.objects.filter(tenant=globex.tenant, state=ImportState.OPEN).count() == 1
    assert len(_names_root("root-1")) >= 6

    out = StringIO()
    call_command("rotate_root_key", stdout=out)
    assert "root-2 is now current" in out.getvalue()
    # Not yet: everything is still under root-1, and the refusal says what.
    with pytest.raises(CommandError) as refused:
        call_command("retire_root_key", "root-1", stdout=StringIO())
    for what in ("data keys", "lookup keys", "key-store credentials", "uploaded keys"):
        assert what in str(refused.value)
    assert "import private keys" in str(refused.value)
    assert root_key_file().versions() == [1, 2]

    out = StringIO()
    call_command("rewrap_data_keys", stdout=out)
    assert "credentials: 1 sealed again" in out.getvalue()
    assert "uploaded keys: 1 sealed again" in out.getvalue()
    assert "import private keys: 1 sealed again" in out.getvalue()
    signed_again = int(out.getvalue().split("Key Vault blobs signed again: ")[1].split()[0])
    assert signed_again >= 2  # acme's DEK and lookup key at least
    assert _names_root("root-1") == []
    assert root_key_dependents(1) == {}

    # A rerun finds nothing to move.
    out = StringIO()
    call_command("rewrap_data_keys", stdout=out)
    assert "sealed again" not in out.getvalue()
    assert "Key Vault blobs signed again: 0" in out.getvalue()

    with pytest.raises(KeyActionRefused, match="current root key version"):
        root_key_retire(number=2, actor=SYSTEM)
    out = StringIO()
    call_command("retire_root_key", "root-1", stdout=out)
    assert "root-1 is retired" in out.getvalue()
    document = json.loads(Path(root_key_file().path).read_text())
    assert set(document["keys"]) == {"2"} and document["current"] == 2
    assert AuditEvent.objects.filter(action="kek.root_retire", target="root-1").exists()
    assert not KekVersion.objects.filter(
        source__kind=SourceKind.LOCAL, provider_version="root-1"
    ).exclude(state=KekState.RETIRED)

    # Everything still opens, from a cold start, with root-1 gone.
    reset_for_tests()
    _readable(acme.tenant, acme_records)
    _readable(globex.tenant, globex_records)
    azure_source.refresh_from_db()
    assert credentials_of(azure_source)["client_secret"] == azure.secret
    uploaded.refresh_from_db()
    assert uploaded_material(uploaded) == customer_key
    # The open import's private key moved too: the customer's upload still works.
    upload_pages.customer_wraps(tmp_path / "second")
    body = upload_pages.upload(
        client,
        "globex",
        (tmp_path / "second" / "CustomerEncryptionKey.bin").read_bytes(),
        second["ImportToken.bin"],
    ).content.decode()
    assert "Its key check value is" in body


def test_retire_refuses_unknown_versions_and_bad_input(db) -> None:
    with pytest.raises(CommandError, match="not a root key version"):
        call_command("retire_root_key", "root-one", stdout=StringIO())
    with pytest.raises(CommandError, match="root-7 is not in the root key file"):
        call_command("retire_root_key", "7", stdout=StringIO())
    with pytest.raises(CommandError, match="current root key version"):
        call_command("retire_root_key", "root-1", stdout=StringIO())
    out = StringIO()
    call_command("retire_root_key", "root-1", "--check", stdout=out)
    assert "Nothing depends on it." in out.getvalue()
    assert root_key_file().versions() == [1]


def test_a_rewrap_interrupted_part_way_is_finished_by_a_rerun(acme, monkeypatch) -> None:
    records = records_create(tenant=acme.tenant, items=list(synthetic_records(4)))
    root_key_file().rotate()
    from keys.services import deks

    def crash(**_: Any) -> None:
        raise RuntimeError("worker killed")

    # Sealed secrets are moved first; the crash comes before the data keys.
    monkeypatch.setattr("keys.services.rootkeys.kek_rewrap_vendor_deks", crash)
    with pytest.raises(RuntimeError):
        call_command("rewrap_data_keys", stdout=StringIO())
    assert root_key_dependents(1)  # the DEK and lookup key are still under root-1
    monkeypatch.setattr(
        "keys.services.rootkeys.kek_rewrap_vendor_deks", deks.kek_rewrap_vendor_deks
    )
    call_command("rewrap_data_keys", stdout=StringIO())
    assert root_key_dependents(1) == {}
    root_key_retire(number=1, actor=SYSTEM)
    _readable(acme.tenant, records)


def test_each_tenant_rewrap_is_recorded_once(acme, globex) -> None:
    """A tenant with many stale DEKs was listed once per DEK (the default ordering
    in a SELECT DISTINCT) and got one empty rewrap event per extra listing."""
    from keys.services.deks import dek_rotate
    from keys.services.rootkeys import root_key_rewrap, root_key_rotate

    for _ in range(3):
        dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="tests")
    root_key_rotate(actor=SYSTEM)
    report = root_key_rewrap(actor=SYSTEM)
    assert report.data_keys == {"acme": 4, "globex": 1}
    for tenant, moved in ((acme.tenant, 4), (globex.tenant, 1)):
        events = AuditEvent.objects.filter(tenant=tenant, action="kek.rewrap")
        assert [e.details["data_keys"] for e in events] == [moved]
