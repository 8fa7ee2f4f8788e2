from __future__ import annotations

from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from api.errors import ERROR_CODES

CODES = {
    "unauthorized",
    "forbidden",
    "not_found",
    "invalid_json",
    "invalid_field",
    "unknown_kind",
    "too_large",
    "idempotency_key_reused",
    "paused",
    "migrating",
    "key_revoked",
    "key_unavailable",
}


def test_the_document_is_served_and_describes_every_route(db) -> None:
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/records",
        "/records/batch",
        "/records/{id}",
        "/objects/{key}",
        "/audit/events",
    }
    assert set(doc["paths"]["/records"]) == {"get", "post"}
    assert set(doc["paths"]["/records/{id}"]) == {"parameters", "get", "delete"}
    assert set(doc["paths"]["/objects/{key}"]) == {"parameters", "put", "get", "head", "delete"}
    resolver = get_resolver()
    api_routes = [
        str(p.pattern)
        for r in resolver.url_patterns
        if isinstance(r, URLResolver) and str(r.pattern) == "api/v1/"
        for p in r.url_patterns
        if isinstance(p, URLPattern)
    ]
    assert set(api_routes) == {
        "records",
        "records/batch",
        "records/<uuid:uid>",
        "audit/events",
        "openapi.json",
    }


def test_every_error_code_is_documented_with_its_status(db) -> None:
    doc = Client().get("/api/v1/openapi.json").json()
    error = doc["components"]["schemas"]["Error"]
    assert set(error["properties"]["error"]["properties"]["code"]["enum"]) >= CODES
    assert set(error["x-error-codes"]) == set(ERROR_CODES)
    text = str(doc["paths"])
    for code in CODES:
        assert f"`{code}`" in text, code
    put = doc["paths"]["/objects/{key}"]["put"]
    assert "413" in put["responses"] and "503" in put["responses"]
    get = doc["paths"]["/objects/{key}"]["get"]["responses"]["200"]["headers"]
    assert {"ETag", "X-Content-SHA256"} <= set(get)
    assert doc["paths"]["/records"]["post"]["security"] == [{"bearer": ["records:write"]}]


def test_the_audit_events_endpoint_and_its_scope_are_documented(db) -> None:
    doc = Client().get("/api/v1/openapi.json").json()
    get = doc["paths"]["/audit/events"]["get"]
    assert get["security"] == [{"bearer": ["audit:read"]}]
    assert {p["name"] for p in get["parameters"]} == {"after", "limit"}
    limit = next(p for p in get["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 1000, 100)
    assert set(get["responses"]) == {"200", "400", "401", "403", "405"}
    assert "`invalid_cursor`" in get["responses"]["400"]["description"]
    schemas = doc["components"]["schemas"]
    assert schemas["AuditEventPage"]["required"] == ["events", "next"]
    assert {"seq", "hash", "prev_hash"} <= set(schemas["AuditEvent"]["required"])
    assert "`audit:read`" in doc["components"]["securitySchemes"]["bearer"]["description"]


def test_what_the_objects_endpoints_answer_is_documented(acme) -> None:
    """Schemathesis found these two answers missing from the document."""
    from tests.api.conftest import issue

    doc = Client().get("/api/v1/openapi.json").json()["paths"]["/objects/{key}"]
    token = issue(acme.tenant, ["objects:read", "objects:write"]).text
    client = Client(headers={"Authorization": f"Bearer {token}"})
    url = "/api/v1/objects/doc/check.bin"
    first = client.put(url, b"one", content_type="application/octet-stream")
    again = client.put(url, b"two", content_type="application/octet-stream")
    assert (first.status_code, again.status_code) == (201, 200)  # replacing is a 200
    assert {"200", "201"} <= set(doc["put"]["responses"])
    too_long = client.delete("/api/v1/objects/" + "k" * 1025)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "invalid_field"
    assert "400" in doc["delete"]["responses"]
