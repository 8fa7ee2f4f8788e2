from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest

from audit.models import AuditEvent
from keys.models import KeySource, SourceKind
from keys.runtime import reset_for_tests
from records.api_views import MAX_LIMIT
from records.models import Record, SealedFields
from tenants.models import ServiceState, Tenant
from tests.api.conftest import Api, issue, user_record


def test_create_returns_the_record_and_stores_it_encrypted(acme, api) -> None:
    response = api.post("records", user_record())
    assert response.status_code == 201
    body = response.json()
    assert body["kind"] == "user" and body["external_id"] == "u-1"
    assert body["fields"] == {"email": "Ada@Example.com", "full_name": "Ada Lovelace"}
    assert body["created"].endswith("Z")
    assert response["Location"] == f"/api/v1/records/{body['id']}"
    row = Record.objects.get(uid=body["id"], tenant=acme.tenant)
    sealed = bytes(SealedFields.objects.get(record=row).pii)
    assert b"Ada" not in sealed and b"Lovelace" not in sealed
    assert api.get(f"records/{body['id']}").json() == body


def test_delete_is_204_then_404_and_audited(acme, api) -> None:
    uid = api.post("records", user_record()).json()["id"]
    assert api.delete(f"records/{uid}").status_code == 204
    assert api.get(f"records/{uid}").status_code == 404
    assert api.delete(f"records/{uid}").status_code == 404
    event = AuditEvent.objects.get(tenant=acme.tenant, action="record.delete")
    assert event.actor_kind == "api" and uid in event.target


def test_an_unknown_id_is_404(api) -> None:
    response = api.get(f"records/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "No such record."}}


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        ("\udcff".encode("utf-8", "surrogatepass"), "invalid_json", None),
        ({"kind": "robot", "external_id": "x"}, "unknown_kind", "kind"),
        ({"kind": "user", "external_id": ""}, "invalid_field", "external_id"),
        ({"kind": "user", "external_id": "x" * 256}, "invalid_field", "external_id"),
        ({"kind": "user", "external_id": "x", "fields": []}, "invalid_field", "fields"),
        (
            {"kind": "user", "external_id": "x", "fields": {"shoe_size": "9"}},
            "invalid_field",
            "fields.shoe_size",
        ),
        (
            {"kind": "device", "external_id": "x", "fields": {"email": "a@b.c"}},
            "invalid_field",
            "fields.email",
        ),
        (
            {"kind": "user", "external_id": "x", "fields": {"email": 5}},
            "invalid_field",
            "fields.email",
        ),
        ({"kind": "user", "external_id": "x", "colour": "red"}, "invalid_field", "colour"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(acme, api, body, code, field) -> None:
    response = api.post("records", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert not Record.objects.filter(tenant=acme.tenant).exists()


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "x\udfff"])
@pytest.mark.parametrize("where", ["external_id", "fields.email"])
def test_text_that_cannot_be_stored_is_400_naming_the_field(acme, api, text, where) -> None:
    """Valid JSON that PostgreSQL's text cannot hold (NUL) or UTF-8 cannot encode
    (an unpaired surrogate): the field's error, not a 500, and nothing written."""
    body: dict[str, Any] = {"kind": "user", "external_id": "x", "fields": {"email": "a@b.c"}}
    if where == "external_id":
        body["external_id"] = text
    else:
        body["fields"]["email"] = text
    response = api.post("records", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_field", where)
    assert "no NUL character" in error["message"]
    assert not Record.objects.filter(tenant=acme.tenant).exists()


def test_a_body_over_the_limit_is_413(acme, api, settings) -> None:
    settings.KEYWARD_API_MAX_BODY_BYTES = 2048
    response = api.post("records", user_record(full_name="x" * 4096))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert api.post("records", user_record(full_name="x" * 100)).status_code == 201


def test_a_duplicate_external_id_is_409(api) -> None:
    assert api.post("records", user_record("dup")).status_code == 201
    response = api.post("records", user_record("dup"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_wrong_methods_are_405(api) -> None:
    uid = api.post("records", user_record()).json()["id"]
    for response in (
        api.client.put("/api/v1/records", headers=api.headers),
        api.client.patch(f"/api/v1/records/{uid}", headers=api.headers),
        api.client.post(f"/api/v1/records/{uid}", headers=api.headers),
        api.delete("records"),
    ):
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert response["Allow"]


def test_list_pages_with_an_opaque_cursor(acme, api) -> None:
    created = [api.post("records", user_record(f"u-{i}")).json()["id"] for i in range(7)]
    api.post("records", {"kind": "device", "external_id": "d-1", "fields": {"sid": "S-1"}})
    seen, cursor, pages = [], None, 0
    while True:
        params = {"kind": "user", "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.get("records", params).json()
        seen += [r["id"] for r in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # One character in the middle changed: each of its six bits is data (a
        # changed last character may only touch base64's unused bits, or be
        # the same character, and decode to the very same cursor).
        middle = len(cursor) // 2
        swapped = "B" if cursor[middle] != "B" else "C"
        tampered = api.get("records", {"cursor": cursor[:middle] + swapped + cursor[middle + 1 :]})
        assert tampered.json()["error"]["code"] == "invalid_cursor"
    assert seen == created and pages == 3
    everything = api.get("records", {"limit": MAX_LIMIT}).json()
    assert len(everything["data"]) == 8 and everything["next_cursor"] is None
    assert everything["data"][0]["fields"] == {
        "email": "Ada@Example.com",
        "full_name": "Ada Lovelace",
    }


@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"limit": MAX_LIMIT + 1}, "invalid_field", "limit"),
        ({"limit": 0}, "invalid_field", "limit"),
        ({"limit": "ten"}, "invalid_field", "limit"),
        ({"cursor": "forged"}, "invalid_cursor", "cursor"),
        ({"kind": "robot"}, "unknown_kind", "kind"),
    ],
)
def test_bad_list_parameters_are_400(api, params, code, field) -> None:
    response = api.get("records", params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (ServiceState.MIGRATING, "migrating"),
        (ServiceState.MIGRATING_BACK, "migrating"),
        (ServiceState.ROTATION_PENDING, "paused"),
        (ServiceState.REWRAPPING, "paused"),
    ],
)
def test_writes_of_a_paused_tenant_are_503_with_retry_after(acme, api, state, code) -> None:
    uid = api.post("records", user_record("before")).json()["id"]
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=state)
    for response in (api.post("records", user_record("during")), api.delete(f"records/{uid}")):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == code
        assert int(response["Retry-After"]) > 0
    assert not Record.objects.filter(external_id="during").exists()
    assert api.get(f"records/{uid}").status_code == 200  # reads serve what was stored before
    assert len(api.get("records").json()["data"]) == 1


def test_a_pause_that_begins_after_authentication_is_503_too(acme, api, monkeypatch) -> None:
    import api.auth as auth

    monkeypatch.setattr(auth, "_check_tenant", lambda tenant, scope: None)
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.MIGRATING)
    response = api.post("records", user_record())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "migrating"
    assert "Retry-After" in response


@pytest.mark.parametrize("state", [ServiceState.REVOKED, ServiceState.DESTROYED])
def test_a_revoked_tenant_is_403_key_revoked(acme, api, state) -> None:
    uid = api.post("records", user_record()).json()["id"]
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=state)
    for response in (api.get(f"records/{uid}"), api.get("records"), api.post("records", {})):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "key_revoked"


def test_an_unreachable_key_store_with_an_expired_cache_is_503(byok, settings) -> None:
    tenant = byok["acme"].tenant
    client = Api(issue(tenant).text)
    uid = str(byok["records"][0].uid)
    assert client.get(f"records/{uid}").status_code == 200
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{closed}"
    settings.KEYWARD_AWS_TIMEOUT_SECONDS = 1
    source = KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS)
    source.config = {**source.config, "probe": closed}  # a new provider with the new endpoint
    source.save()
    reset_for_tests()  # as if the cache TTL had run out
    response = client.get(f"records/{uid}")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "key_unavailable"
    assert "Retry-After" in response
