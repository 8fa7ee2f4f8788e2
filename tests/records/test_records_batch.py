"""POST /api/v1/records/batch: many records in one request, all or none."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from api.models import IdempotencyKey
from records.models import Record
from tenants.models import ServiceState, Tenant
from tests.api.conftest import user_record


def batch(*records: dict[str, Any]) -> dict[str, Any]:
    return {"records": list(records)}


def users(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        user_record(f"u-{n}", email=f"user{n}@example.com", full_name=f"User {n}")
        for n in range(start, start + count)
    ]


def test_a_batch_is_created_in_order_encrypted_and_indexed(acme, api) -> None:
    response = api.post("records/batch", batch(*users(3)))
    assert response.status_code == 201
    created = response.json()["records"]
    assert [r["external_id"] for r in created] == ["u-0", "u-1", "u-2"]
    assert created[1]["fields"]["email"] == "user1@example.com"
    assert Record.objects.filter(tenant=acme.tenant).count() == 3
    found = api.get("records", {"field": "email", "value": "USER2@example.com"}).json()
    assert [r["external_id"] for r in found["data"]] == ["u-2"]
    one = api.get(f"records/{created[0]['id']}").json()
    assert one["fields"] == created[0]["fields"]


def test_an_invalid_record_is_named_and_nothing_is_stored(acme, api) -> None:
    bad = user_record("u-9", nope="x")
    response = api.post("records/batch", batch(*users(2), bad))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["field"] == "records[2].fields.nope"
    assert error["message"].startswith("records[2]: ")
    assert not Record.objects.filter(tenant=acme.tenant).exists()


def test_a_nul_in_one_external_id_is_named_and_nothing_is_stored(acme, api) -> None:
    bad = user_record("u-\x009")
    response = api.post("records/batch", batch(*users(2), bad))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_field", "records[2].external_id")
    assert not Record.objects.filter(tenant=acme.tenant).exists()


def test_duplicates_in_the_batch_or_already_stored_are_refused_whole(acme, api) -> None:
    twice = api.post("records/batch", batch(*users(2), users(1)[0]))
    assert twice.status_code == 400
    assert twice.json()["error"]["field"] == "records[2].external_id"
    assert api.post("records", users(1, start=5)[0]).status_code == 201
    clash = api.post("records/batch", batch(*users(3, start=4)))
    assert clash.status_code == 409
    assert "'u-5'" in clash.json()["error"]["message"]
    assert Record.objects.filter(tenant=acme.tenant).count() == 1


def test_size_limits(api) -> None:
    assert api.post("records/batch", batch()).json()["error"]["field"] == "records"
    assert api.post("records/batch", batch(*users(501))).status_code in (400, 413)
    assert api.post("records/batch", {"records": [1]}).json()["error"]["field"] == "records[0]"


def test_a_retried_batch_returns_the_first_result_and_stores_once(acme, api) -> None:
    headers = {"Idempotency-Key": "import-42"}
    first = api.post("records/batch", batch(*users(4)), headers)
    again = api.post("records/batch", batch(*users(4)), headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Record.objects.filter(tenant=acme.tenant).count() == 4
    kept = str(IdempotencyKey.objects.get(tenant=acme.tenant, key="import-42").response)
    assert "example.com" not in kept  # ids only, never the fields


def test_the_cost_of_a_batch_does_not_grow_with_its_size(acme, api) -> None:
    api.post("records/batch", batch(*users(1, start=900)))  # the lookup key exists now
    counts = []
    for size, start in ((5, 0), (100, 100)):
        with CaptureQueriesContext(connection) as queries:
            assert api.post("records/batch", batch(*users(size, start=start))).status_code == 201
        counts.append(len(queries))
    assert counts[1] <= counts[0] + 2, counts


def test_scope_pause_and_other_tenants(acme, globex, api_for) -> None:
    reader = api_for(acme.tenant, ["records:read"])
    assert reader.post("records/batch", batch(*users(1))).status_code == 403
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.MIGRATING)
    paused = api_for(acme.tenant).post("records/batch", batch(*users(1)))
    assert paused.status_code == 503 and paused["Retry-After"]
    assert paused.json()["error"]["code"] == "migrating"
    other = api_for(globex.tenant).post("records/batch", batch(*users(2)))
    assert other.status_code == 201
    assert not Record.objects.filter(tenant=acme.tenant).exists()
