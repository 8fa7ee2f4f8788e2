"""Every answer under /api/v1/ is in the JSON error model: unknown paths and wrong methods too."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from api.errors import ERROR_CODES
from tests.api.conftest import issue

METHODS = ["get", "post", "put", "patch", "delete", "options"]
UNKNOWN = [
    "/api/v1",
    "/api/v1/",
    "/api/v1/nope",
    "/api/v1/records/",
    "/api/v1/records/not-a-uuid",
    "/api/v1/records/batch/extra",
    "/api/v1/objects/",
    "/api/v1/v2/records",
]


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert ERROR_CODES[code][0] == status
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize("path", UNKNOWN)
@pytest.mark.parametrize("method", METHODS)
def test_an_unknown_path_is_a_json_404_whatever_the_method(db, method: str, path: str) -> None:
    response = getattr(Client(), method)(path)
    assert_error(response, 404, "not_found")


def test_an_unknown_path_is_a_json_404_with_a_token_too(acme) -> None:
    token = issue(acme.tenant).text
    response = Client().post(
        "/api/v1/record", {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert_error(response, 404, "not_found")


def test_a_head_request_to_an_unknown_path_is_json_too(db) -> None:
    response = Client().head("/api/v1/nope")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/openapi.json", "GET"),
        ("/api/v1/records", "GET, POST"),
        ("/api/v1/records/batch", "POST"),
        ("/api/v1/records/6f1c1c2e-8d7b-4b0e-9a47-3f0e5c1d2a90", "DELETE, GET"),
        ("/api/v1/objects/reports/a.csv", "DELETE, GET, HEAD, PUT"),
    ],
)
def test_a_wrong_method_on_an_endpoint_is_a_json_405(db, path: str, allowed: str) -> None:
    response = Client().patch(path)
    assert_error(response, 405, "method_not_allowed")
    assert sorted(response["Allow"].split(", ")) == sorted(allowed.split(", "))


def test_the_openapi_document_still_answers_get(db) -> None:
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    codes = response.json()["components"]["schemas"]["Error"]["x-error-codes"]
    assert codes["not_found"]["status"] == 404 and codes["server_error"]["status"] == 500


def test_a_suspicious_request_under_the_api_is_a_json_400(db) -> None:
    response = Client().get("/api/v1/records", headers={"host": "evil.example"})
    assert_error(response, 400, "bad_request")


def test_pages_outside_the_api_stay_html(db) -> None:
    response = Client().get("/api/v2/records")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
