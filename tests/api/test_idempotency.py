from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from api.models import IdempotencyKey
from records.models import Record
from tests.api.conftest import Api, issue, user_record
from tests.support.embedded import run_embedded


def test_a_retry_returns_the_first_result_and_stores_once(acme, api) -> None:
    headers = {"Idempotency-Key": "create-u-1"}
    first = api.post("records", user_record(), headers)
    again = api.post("records", user_record(), headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Record.objects.filter(tenant=acme.tenant).count() == 1


def test_what_a_key_keeps_holds_no_personal_data(acme, api) -> None:
    first = api.post("records", user_record(), {"Idempotency-Key": "k"})
    row = IdempotencyKey.objects.get(tenant=acme.tenant, key="k")
    kept = str(row.response) + bytes(row.request_sha256).hex()
    for value in first.json()["fields"].values():
        assert value not in str(row.response)
    assert "fields" not in (row.response or {})
    # The fingerprint is keyed: a plain SHA-256 of the request does not match it.
    import hashlib

    plain = json.dumps(["POST", "/records", user_record()], sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(plain.encode()).hexdigest() not in kept
    # A replay after the record was deleted says so rather than inventing a body.
    assert api.delete(f"records/{first.json()['id']}").status_code == 204
    again = api.post("records", user_record(), {"Idempotency-Key": "k"})
    assert again.status_code == 404


def test_key_order_and_whitespace_do_not_make_another_request(api) -> None:
    headers = {"Idempotency-Key": "k"}
    assert api.post("records", user_record(), headers).status_code == 201
    body = '{ "fields": {"full_name": "Ada Lovelace", "email": "Ada@Example.com"},'
    body += ' "external_id": "u-1", "kind": "user" }'
    assert api.post("records", body, headers).status_code == 201


def test_the_same_key_with_another_body_is_409(acme, api) -> None:
    headers = {"Idempotency-Key": "k"}
    assert api.post("records", user_record("a"), headers).status_code == 201
    response = api.post("records", user_record("b"), headers)
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "idempotency_key_reused",
        "message": "This Idempotency-Key was already used with a different request.",
        "field": "Idempotency-Key",
    }
    assert not Record.objects.filter(external_id="b").exists()


def test_keys_belong_to_one_tenant(acme, globex, api) -> None:
    other = Api(issue(globex.tenant).text)
    headers = {"Idempotency-Key": "shared"}
    assert api.post("records", user_record("a"), headers).status_code == 201
    assert other.post("records", user_record("b"), headers).status_code == 201


def test_a_failed_create_is_not_remembered(acme, api) -> None:
    from tenants.models import ServiceState, Tenant

    headers = {"Idempotency-Key": "k"}
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.MIGRATING)
    assert api.post("records", user_record(), headers).status_code == 503
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.VENDOR_MANAGED)
    assert api.post("records", user_record(), headers).status_code == 201
    assert "Idempotent-Replayed" not in api.post(
        "records", user_record("z"), {"Idempotency-Key": "z"}
    )


def test_keys_expire_after_24_hours(acme, api) -> None:
    headers = {"Idempotency-Key": "k"}
    assert api.post("records", user_record("a"), headers).status_code == 201
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api.post("records", user_record("b"), headers)
    assert response.status_code == 201 and "Idempotent-Replayed" not in response
    row = IdempotencyKey.objects.get()
    assert row.expires_at - row.created == timedelta(hours=24)


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_a_malformed_key_is_400(api, key) -> None:
    response = api.post("records", user_record(), {"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_retries_store_once(acme) -> None:
    assert connection.vendor == "postgresql"
    text = issue(acme.tenant).text
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def send() -> None:
        try:
            client = Api(text)
            barrier.wait()
            results.append(client.post("records", user_record(), {"Idempotency-Key": "race"}))
        finally:
            connection.close()

    for _ in range(5):
        results.clear()
        IdempotencyKey.objects.all().delete()
        Record.objects.filter(tenant=acme.tenant).delete()
        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [201, 201]
        assert results[0].json() == results[1].json()
        assert sorted(r.has_header("Idempotent-Replayed") for r in results) == [False, True]
        assert Record.objects.filter(tenant=acme.tenant).count() == 1


def test_keys_work_on_the_embedded_sqlite_database(tmp_path) -> None:
    """`make run`'s database: a create with a key once answered 500 there (the driver
    takes no UUID as it is)."""
    answers = run_embedded("tests.api.embedded_idempotency", tmp_path)
    assert answers["vendor"] == "sqlite"
    status, replayed, first_id = answers["first"]
    assert (status, replayed) == (201, None)
    assert answers["retry"] == [201, "true", first_id]
    assert answers["other body"] == 409
    assert answers["duplicate"] == 409
    status, replayed, batch_ids = answers["batch"]
    assert (status, replayed, len(batch_ids)) == (201, None, 3)
    assert answers["batch retry"] == [201, "true", batch_ids]
    assert answers["records"] == 4  # one and three: no retry stored twice, no failure stored
    assert answers["keys"] == ["k-1", "k-3"]
