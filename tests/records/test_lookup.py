from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.providers.base import KeyProviderError
from keys.registry import provider_for
from keys.runtime import dek_context
from records.fields import NewRecord
from records.indexkeys import index_context, index_key_rotate, index_rebuild
from records.models import IndexKey, IndexKeyState, LookupRow
from records.services import records_create
from tests.api.conftest import Api, issue, user_record


def ids(response: Any) -> list[str]:
    return [r["external_id"] for r in response.json()["data"]]


def test_lookup_by_normalised_exact_value(api) -> None:
    api.post("records", user_record("ada", email="Ada@Example.com", full_name="Ada  Lovelace"))
    api.post("records", user_record("bob", email="bob@example.com", sid="s-1-5-21-9"))
    api.post("records", {"kind": "device", "external_id": "pc", "fields": {"sid": "S-1-5-21-9"}})
    assert ids(api.get("records", {"field": "email", "value": "  ada@EXAMPLE.com "})) == ["ada"]
    assert ids(api.get("records", {"field": "full_name", "value": "ADA lovelace"})) == ["ada"]
    fullwidth = "\uff21\uff24\uff21 Lovelace"
    assert ids(api.get("records", {"field": "full_name", "value": fullwidth})) == ["ada"]
    assert ids(api.get("records", {"field": "sid", "value": "S-1-5-21-9"})) == ["bob", "pc"]
    by_kind = api.get("records", {"field": "sid", "value": "S-1-5-21-9", "kind": "device"})
    assert ids(by_kind) == ["pc"]
    assert ids(api.get("records", {"field": "email", "value": "ada@example.co"})) == []
    assert ids(api.get("records", {"field": "entra_name", "value": "ada@example.com"})) == []
    found = api.get("records", {"field": "email", "value": "bob@example.com"}).json()["data"][0]
    assert found["fields"]["sid"] == "s-1-5-21-9"  # stored as given, matched normalised


def test_lookup_pages_like_the_list(api) -> None:
    for i in range(5):
        api.post("records", user_record(f"u-{i}", full_name="Same Name"))
    first = api.get("records", {"field": "full_name", "value": "same name", "limit": 3}).json()
    rest = api.get(
        "records",
        {"field": "full_name", "value": "same name", "limit": 3, "cursor": first["next_cursor"]},
    ).json()
    assert [r["external_id"] for r in first["data"] + rest["data"]] == [f"u-{i}" for i in range(5)]
    assert rest["next_cursor"] is None


def test_lookup_errors(api) -> None:
    for params, field in (
        ({"field": "local_admins", "value": "x"}, "field"),
        ({"field": "favourite", "value": "x"}, "field"),
        ({"field": "email"}, "value"),
        ({"value": "x"}, "field"),
    ):
        response = api.get("records", params)
        assert response.status_code == 400
        assert response.json()["error"] == {**response.json()["error"], "field": field}


def test_the_lookup_table_holds_no_plaintext(acme, api) -> None:
    api.post("records", user_record("ada", email="ada@example.com", full_name="Ada Lovelace"))
    rows = list(LookupRow.objects.filter(tenant=acme.tenant))
    assert {r.field for r in rows} == {"email", "full_name"}
    for row in rows:
        digest = bytes(row.digest)
        assert len(digest) == 32
        for text in ("ada@example.com", "ada", "lovelace", "Ada Lovelace"):
            assert text.encode() not in digest.lower()


def test_equal_values_of_two_tenants_have_different_digests(acme, globex, api) -> None:
    other = Api(issue(globex.tenant).text)
    api.post("records", user_record("a", email="same@example.com"))
    other.post("records", user_record("b", email="same@example.com"))
    digests = {bytes(r.digest) for r in LookupRow.objects.filter(field="email")}
    assert len(digests) == 2
    assert ids(other.get("records", {"field": "email", "value": "same@example.com"})) == ["b"]


def test_the_index_key_is_wrapped_and_cannot_unwrap_as_a_dek(acme, api) -> None:
    api.post("records", user_record())
    key = IndexKey.objects.select_related("kek_version__source").get(tenant=acme.tenant)
    provider = provider_for(key.kek_version.source)
    tenant_id, version = str(acme.tenant.pk), key.kek_version.provider_version
    assert len(provider.unwrap(bytes(key.wrapped), index_context(tenant_id, 1), version)) == 32
    try:
        provider.unwrap(bytes(key.wrapped), dek_context(tenant_id, 1), version)
    except KeyProviderError:
        pass
    else:
        raise AssertionError("an index key unwrapped as a DEK")


def test_records_created_outside_the_api_are_indexed(acme, api) -> None:
    records_create(
        tenant=acme.tenant,
        items=[NewRecord("user", f"bulk-{i}", {"email": f"p{i}@example.com"}) for i in range(50)],
        batch_size=20,
    )
    assert ids(api.get("records", {"field": "email", "value": "P42@example.com"})) == ["bulk-42"]


def test_rotation_rebuilds_under_a_new_key_then_retires_the_old(acme, api, settings) -> None:
    settings.KEYWARD_API_INDEX_REBUILD_BATCH = 10
    for i in range(25):
        api.post("records", user_record(f"u-{i}", email=f"u{i}@example.com"))
    old = IndexKey.objects.get(tenant=acme.tenant)
    new = index_key_rotate(tenant=acme.tenant, actor=Actor.system("tests"))
    assert new.version == 2 and new.state == IndexKeyState.BUILDING
    assert index_key_rotate(tenant=acme.tenant, actor=Actor.system("tests")).pk == new.pk
    # Created during the rebuild: indexed under both versions by the hook.
    api.post("records", user_record("during", email="during@example.com"))
    assert set(
        LookupRow.objects.filter(record__external_id="during").values_list("version", flat=True)
    ) == {1, 2}
    # Lookups keep using the active version until the rebuild is done.
    assert ids(api.get("records", {"field": "email", "value": "u3@example.com"})) == ["u-3"]
    index_rebuild(index_key_id=new.pk)
    new.refresh_from_db()
    old.refresh_from_db()
    assert (new.state, old.state) == (IndexKeyState.ACTIVE, IndexKeyState.RETIRED)
    assert set(LookupRow.objects.filter(tenant=acme.tenant).values_list("version", flat=True)) == {
        2
    }
    assert LookupRow.objects.filter(tenant=acme.tenant).count() == 26  # one email each
    assert ids(api.get("records", {"field": "email", "value": "U3@example.com"})) == ["u-3"]
    assert ids(api.get("records", {"field": "email", "value": "during@example.com"})) == ["during"]
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="blind_index.rotate").exists()
    assert AuditEvent.objects.filter(tenant=acme.tenant, action="blind_index.rebuilt").exists()
    index_rebuild(index_key_id=new.pk)  # a rerun is a no-op
    assert LookupRow.objects.filter(tenant=acme.tenant).count() == 26


def test_a_rebuild_interrupted_midway_resumes_from_its_checkpoint(
    acme, api, settings, monkeypatch
) -> None:
    import records.indexkeys as indexkeys

    settings.KEYWARD_API_INDEX_REBUILD_BATCH = 4
    for i in range(10):
        api.post("records", user_record(f"u-{i}", email=f"u{i}@example.com"))
    new = index_key_rotate(tenant=acme.tenant, actor=Actor.system("tests"))
    real, calls = indexkeys._rebuild_batch, []

    def crash_on_third(key: Any, batch: int) -> bool:
        calls.append(key.rebuilt_through)
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return real(key, batch)

    monkeypatch.setattr(indexkeys, "_rebuild_batch", crash_on_third)
    with pytest.raises(RuntimeError):
        index_rebuild(index_key_id=new.pk)
    new.refresh_from_db()
    assert new.state == IndexKeyState.BUILDING and new.rebuilt_through > 0
    monkeypatch.setattr(indexkeys, "_rebuild_batch", real)
    index_rebuild(index_key_id=new.pk)
    new.refresh_from_db()
    assert new.state == IndexKeyState.ACTIVE
    assert LookupRow.objects.filter(tenant=acme.tenant, version=2).count() == 10
    assert ids(api.get("records", {"field": "email", "value": "u9@example.com"})) == ["u-9"]
