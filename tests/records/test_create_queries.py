"""The SQL round trips of one API create, pinned so that they cannot creep back.

COPY and the other statements sent on psycopg's own cursor (records.bulk) go
into Django's query log too, so the count is every statement the create sends.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from api.models import IdempotencyKey
from audit.services import Actor
from records.fields import NewRecord
from records.indexkeys import index_key_rotate
from records.models import LookupRow, Record
from records.services import records_create
from tenants.models import ServiceState, Tenant
from tenants.states import ServicePaused
from tests.api.conftest import user_record

# The token and its tenant (one join); one statement checking the tenant's
# state and index keys and writing the Idempotency-Key's row with its outcome,
# the record, its sealed fields and lookup rows. No transaction around them:
# the one statement that writes is all or nothing on its own.
SINGLE_CREATE_STATEMENTS = ["SELECT", "WITH"]


def _sent(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"].split(None, 1)[0].upper() for q in queries.captured_queries]


@pytest.mark.django_db(transaction=True)  # as in production: no transaction is open
def test_one_create_with_an_idempotency_key_and_an_indexed_field(acme, api) -> None:
    assert api.post("records", user_record("warm")).status_code == 201  # caches warm
    with CaptureQueriesContext(connection) as queries:
        response = api.post(
            "records",
            user_record("u-2", email="Ada@Example.com"),
            headers={"Idempotency-Key": "k-2"},
        )
    assert response.status_code == 201
    assert _sent(queries) == SINGLE_CREATE_STATEMENTS
    record = Record.objects.get(tenant=acme.tenant, uid=response.json()["id"])
    assert LookupRow.objects.filter(record_id=record.pk).count() == 1
    key = IdempotencyKey.objects.get(tenant=acme.tenant, key="k-2")
    assert (key.status, key.response) == (
        201,
        {"id": str(record.uid), "kind": "user", "external_id": "u-2"},
    )
    assert api.get(f"records/{record.uid}").json()["fields"] == {"email": "Ada@Example.com"}
    # Without a key, the same single statement.
    with CaptureQueriesContext(connection) as queries:
        assert api.post("records", user_record("u-3")).status_code == 201
    assert _sent(queries) == SINGLE_CREATE_STATEMENTS


def test_in_a_callers_transaction_a_failed_create_leaves_it_usable(acme, api) -> None:
    """Inside a transaction (here the test's), the one statement runs in a savepoint:
    a duplicate is a 409 and the transaction goes on."""
    body = user_record("u-9", email="d@example.com")
    assert api.post("records", body, headers={"Idempotency-Key": "k-9"}).status_code == 201
    with CaptureQueriesContext(connection) as queries:
        duplicate = api.post("records", body, headers={"Idempotency-Key": "k-10"})
    assert duplicate.status_code == 409
    # The failed statement itself is not in the log: it logs what completed.
    assert _sent(queries) == ["SELECT", "SAVEPOINT", "ROLLBACK", "RELEASE"]
    assert Record.objects.filter(tenant=acme.tenant, external_id="u-9").count() == 1
    assert not IdempotencyKey.objects.filter(tenant=acme.tenant, key="k-10").exists()


def test_a_create_after_an_index_key_rotation_indexes_under_both_keys(acme, api) -> None:
    """The process remembers the index keys writes use; the write checks them, so a
    rotation started elsewhere since (a key being built) is not missed."""
    assert api.post("records", user_record("warm", email="w@example.com")).status_code == 201
    index_key_rotate(tenant=acme.tenant, actor=Actor.system("test"))
    response = api.post(
        "records", user_record("u-5", email="b@example.com"), headers={"Idempotency-Key": "k-5"}
    )
    assert response.status_code == 201
    record = Record.objects.get(tenant=acme.tenant, uid=response.json()["id"])
    versions = set(LookupRow.objects.filter(record_id=record.pk).values_list("version", flat=True))
    assert versions == {1, 2}


def test_a_paused_tenant_gets_503_and_nothing_is_stored(acme, api) -> None:
    assert api.post("records", user_record("warm", email="w@example.com")).status_code == 201
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.ROTATION_PENDING)
    response = api.post(
        "records", user_record("u-6", email="c@example.com"), headers={"Idempotency-Key": "k-6"}
    )
    assert response.status_code == 503
    assert not Record.objects.filter(tenant=acme.tenant, external_id="u-6").exists()
    assert not IdempotencyKey.objects.filter(tenant=acme.tenant, key="k-6").exists()


def test_a_retried_create_replays_and_a_duplicate_is_409_with_nothing_stored(acme, api) -> None:
    body = user_record("u-3", email="x@example.com")
    first = api.post("records", body, headers={"Idempotency-Key": "k-3"})
    again = api.post("records", body, headers={"Idempotency-Key": "k-3"})
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    duplicate = api.post("records", body, headers={"Idempotency-Key": "k-4"})
    assert duplicate.status_code == 409
    assert Record.objects.filter(tenant=acme.tenant, external_id="u-3").count() == 1
    # The key of the refused create was not kept: a retry of it is refused again, not replayed.
    assert api.post("records", body, headers={"Idempotency-Key": "k-4"}).status_code == 409


def test_the_single_record_statement_refuses_a_tenant_paused_since_it_was_read(acme) -> None:
    """The service's one-statement write checks the state itself: the Tenant object
    the caller holds (read before the pause) does not let a write through."""
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    records_create(tenant=tenant, items=[NewRecord("user", "warm", {"email": "w@example.com"})])
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.MIGRATING)
    with pytest.raises(ServicePaused):
        records_create(tenant=tenant, items=[NewRecord("user", "u-7", {"email": "d@example.com"})])
    assert not Record.objects.filter(tenant=tenant, external_id="u-7").exists()
    assert not LookupRow.objects.filter(tenant=tenant, record__external_id="u-7").exists()
