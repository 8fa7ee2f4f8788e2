"""Hostile JSON bodies, query strings, headers and object keys against the API.

Whatever arrives, the answer is a success or one of the documented errors
(`{"error": {"code", "message", "field"?}}` with the status of its code), never
a 500, and a refused request stores nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.core import signing
from django.test import Client
from hypothesis import example, given, settings
from hypothesis import strategies as st

from api.errors import ERROR_CODES
from api.models import IdempotencyKey
from audit.models import AuditEvent
from objects.models import StoredObject
from records.fields import FIELDS_BY_KIND
from records.models import Record
from tests.api.conftest import Api, issue
from tests.support.fuzz import examples, json_values

# Hostile input: a short run in `make test`, twenty times the examples in `make faults`.
pytestmark = pytest.mark.faults

FIELD_NAMES = sorted({name for names in FIELDS_BY_KIND.values() for name in names})


def assert_documented(response: Any, allowed: set[int]) -> None:
    status = response.status_code
    assert status < 500, response.content[:500]
    assert status in allowed | {400, 413}, (status, response.content[:500])
    if status >= 400 and response.request["REQUEST_METHOD"] != "HEAD":
        assert response["Content-Type"] == "application/json"
        body = response.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) <= {"code", "message", "field"}
        assert error["code"] in ERROR_CODES, error
        assert ERROR_CODES[error["code"]][0] == status, error
        assert isinstance(error["message"], str) and error["message"]


def stored() -> tuple[int, int, int]:
    return Record.objects.count(), IdempotencyKey.objects.count(), StoredObject.objects.count()


texts = st.text(max_size=30)
field_values = st.one_of(texts, json_values)
record_shaped = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.one_of(st.sampled_from(sorted(FIELDS_BY_KIND)), field_values),
        "external_id": field_values,
        "fields": st.one_of(
            st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, field_values, max_size=5),
            json_values,
        ),
        "extra": field_values,
    },
)


@pytest.fixture
def writer(acme: Any) -> Api:
    return Api(issue(acme.tenant, ["records:read", "records:write"]).text)


def post(api: Api, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return api.client.post(
        f"/api/v1/{path}",
        data=body,
        content_type="application/json",
        headers={**api.headers, **(headers or {})},
    )


@settings(max_examples=examples(40))
@given(body=st.one_of(record_shaped, json_values))
@example(body={"kind": "user", "external_id": "u-1", "fields": {"email": "a@b.c"}})
@example(body={"kind": "user", "external_id": "u-2", "fields": {"email": "\u0000"}})
@example(body={"kind": "user", "external_id": "", "fields": {}})
def test_any_json_body_creates_a_record_or_is_refused_with_nothing_stored(
    writer: Api, body: Any
) -> None:
    before = stored()
    response = post(writer, "records", json.dumps(body))
    assert_documented(response, {201, 409})
    if response.status_code != 201:
        assert stored() == before


@settings(max_examples=examples(30))
@given(raw=st.binary(max_size=300), key=st.one_of(st.none(), st.text(max_size=300)))
@example(raw=b"\xff\xfe{", key=None)
@example(raw=b"{}", key="")
@example(raw=b'{"kind": "user"}', key="k" * 300)
def test_any_bytes_and_idempotency_key_are_refused_cleanly(
    writer: Api, raw: bytes, key: str | None
) -> None:
    before = stored()
    headers = {} if key is None else {"Idempotency-Key": key}
    try:
        response = post(writer, "records", raw, headers)
    except ValueError:
        # A header value no HTTP client can send (a line break, a NUL): refused
        # by the test client itself, nothing reached the API.
        return
    assert_documented(response, {201, 409})
    if response.status_code != 201:
        assert stored() == before


@settings(max_examples=examples(20))
@given(records=st.one_of(st.lists(record_shaped, max_size=4), json_values))
def test_any_batch_creates_all_or_nothing(writer: Api, records: Any) -> None:
    before = stored()
    response = post(writer, "records/batch", json.dumps({"records": records}))
    assert_documented(response, {201, 409})
    if response.status_code == 201:
        assert stored()[0] == before[0] + len(records)
    else:
        assert stored() == before


query_names = st.sampled_from(["limit", "cursor", "kind", "field", "value", "after", "x"])
query_values = st.one_of(
    texts,
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["0", "1", "500", "501", "\u00b2", "\u0661", "1e3", " 7", "-1"]),
    st.integers().map(lambda n: signing.dumps(n, salt="api.records.cursor")),
    st.text(max_size=5).map(lambda s: signing.dumps(s, salt="api.records.cursor")),
)


@settings(max_examples=examples(60))
@given(query=st.dictionaries(query_names, query_values, max_size=4))
@example(query={"limit": "\u00b2"})
@example(query={"cursor": signing.dumps("x", salt="api.records.cursor")})
def test_any_query_string_lists_or_is_refused(writer: Api, query: dict[str, str]) -> None:
    response = writer.client.get(f"/api/v1/records?{urlencode(query)}", headers=writer.headers)
    assert_documented(response, {200})


def test_a_limit_of_unicode_digits_is_refused_not_a_500(writer: Api) -> None:
    """ "²".isdigit() is true but int("²") fails: that was a 500 on GET /records."""
    for limit in ("\u00b2", "\u0661", "\uff15"):
        response = writer.get("records", {"limit": limit})
        assert response.status_code == 400
        assert response.json()["error"] == {
            "code": "invalid_field",
            "message": "limit must be an integer from 1 to 500.",
            "field": "limit",
        }


@pytest.fixture
def auditor(acme: Any) -> Api:
    return Api(issue(acme.tenant, ["audit:read"]).text)


cursors = st.one_of(
    texts,
    st.tuples(st.text(max_size=40), st.integers()).map(
        lambda t: signing.dumps(list(t), salt="api.audit.cursor")
    ),
    json_values.map(lambda v: signing.dumps(v, salt="api.audit.cursor")),
)


@settings(max_examples=examples(50))
@given(after=st.one_of(st.none(), cursors), limit=st.one_of(st.none(), query_values))
@example(after=None, limit="\u00b2")
def test_any_audit_cursor_and_limit_page_or_are_refused(
    auditor: Api, after: str | None, limit: str | None
) -> None:
    query = {k: v for k, v in (("after", after), ("limit", limit)) if v is not None}
    events = AuditEvent.objects.count()
    response = auditor.client.get(
        f"/api/v1/audit/events?{urlencode(query)}", headers=auditor.headers
    )
    assert_documented(response, {200})
    assert AuditEvent.objects.count() == events  # reading the trail writes nothing to it


@pytest.fixture
def objects_api(acme: Any) -> Api:
    return Api(issue(acme.tenant, ["objects:read", "objects:write"]).text)


object_keys = st.one_of(
    st.text(min_size=1, max_size=80),
    st.lists(
        st.sampled_from(["a", "..", ".", "", "%2e%2e", "b.bin", "\\", "\u00e9", " "]),
        min_size=1,
        max_size=5,
    ).map("/".join),
)


@settings(max_examples=examples(40))
@given(
    key=object_keys,
    method=st.sampled_from(["PUT", "GET", "HEAD", "DELETE"]),
    content_type=st.one_of(st.none(), st.text(max_size=40)),
)
@example(key="../../etc/passwd", method="GET", content_type=None)
@example(key="a/../b", method="PUT", content_type="text/plain")
def test_any_object_key_is_stored_read_or_refused(
    objects_api: Api, key: str, method: str, content_type: str | None
) -> None:
    before = stored()
    url = "/api/v1/objects/" + quote(key, safe="/")
    extra: dict[str, Any] = {}
    if content_type is not None:
        extra["content_type"] = content_type
    try:
        response = objects_api.client.generic(
            method, url, data=b"bytes" if method == "PUT" else b"", headers=objects_api.headers,
            **extra,
        )  # fmt: skip
    except ValueError:
        return  # a header no HTTP client can send (see above)
    assert_documented(response, {200, 201, 204, 404})
    if response.status_code >= 400:
        assert stored() == before


def test_the_api_client_in_these_tests_speaks_for_acme(writer: Api) -> None:
    assert isinstance(writer.client, Client)
    assert post(writer, "records", "{}").status_code == 400


def test_a_key_with_a_line_break_is_refused_as_invalid_not_unrouted(objects_api: Api) -> None:
    """Schemathesis found it: "a\\nb" did not match the URL pattern, so PUT answered 404."""
    url = "/api/v1/objects/" + quote("a\nb", safe="/")
    response = objects_api.client.put(
        url, b"x", content_type="application/octet-stream", headers=objects_api.headers
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_field",
        "message": "a key cannot contain control characters",
        "field": "key",
    }
    assert not StoredObject.objects.exists()
    assert objects_api.client.delete(url, headers=objects_api.headers).status_code == 400
    assert objects_api.client.get(url, headers=objects_api.headers).status_code == 404


def test_a_key_with_a_nul_is_refused_or_not_found_not_a_500(objects_api: Api) -> None:
    """Found by the property test above: PostgreSQL refuses a NUL in a query (a 500)."""
    url = "/api/v1/objects/" + quote("a\x00b", safe="/")
    headers = objects_api.headers
    put = objects_api.client.put(url, b"x", content_type="text/plain", headers=headers)
    assert put.status_code == 400
    assert put.json()["error"]["message"] == "a key cannot contain control characters"
    assert objects_api.client.get(url, headers=headers).status_code == 404
    assert objects_api.client.head(url, headers=headers).status_code == 404
    assert objects_api.client.delete(url, headers=headers).status_code == 400
    assert not StoredObject.objects.exists()
