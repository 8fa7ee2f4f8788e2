"""The SQL round trips of one API create, pinned so that they cannot creep back.

COPY and the other statements sent on psycopg's own cursor (records.bulk) go
into Django's query log too, so the count is every statement the create sends.
"""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from records.models import LookupRow, Record
from tests.api.conftest import user_record

# token and tenant (one join); the idempotency row inserted and returned; the
# create's savepoint; the tenant's state in it; record and sealed fields in one
# statement; the index keys; the lookup rows; savepoint released; the outcome
# stored. Under the test's transaction, the request's own BEGIN and COMMIT are
# a savepoint and its release: 2 more.
SINGLE_CREATE_STATEMENTS = 9 + 2


def test_one_create_with_an_idempotency_key_and_an_indexed_field(acme, api) -> None:
    assert api.post("records", user_record("warm")).status_code == 201  # caches warm
    with CaptureQueriesContext(connection) as queries:
        response = api.post(
            "records",
            user_record("u-2", email="Ada@Example.com"),
            headers={"Idempotency-Key": "k-2"},
        )
    assert response.status_code == 201
    sent = [q["sql"].split(None, 1)[0].upper() for q in queries.captured_queries]
    assert len(sent) == SINGLE_CREATE_STATEMENTS, sent
    record = Record.objects.get(tenant=acme.tenant, uid=response.json()["id"])
    assert LookupRow.objects.filter(record_id=record.pk).count() == 1
    assert api.get(f"records/{record.uid}").json()["fields"] == {"email": "Ada@Example.com"}


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
