from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from django.test import Client

from objects.models import StoredObject
from tenants.models import ServiceState
from tests.api.conftest import issue
from tests.objects.conftest import set_state

URL = "/api/v1/objects/"


class Objects:
    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def put(self, key: str, data: bytes, content_type: str = "application/pdf", **h: str) -> Any:
        return self.client.put(URL + key, data=data, content_type=content_type,
                               headers={**self.headers, **h})  # fmt: skip

    def get(self, key: str, **h: str) -> Any:
        return self.client.get(URL + key, headers={**self.headers, **h})

    def head(self, key: str) -> Any:
        return self.client.head(URL + key, headers=self.headers)

    def delete(self, key: str) -> Any:
        return self.client.delete(URL + key, headers=self.headers)

    def post(self, key: str) -> Any:
        return self.client.post(URL + key, data=b"x", content_type="text/plain",
                                headers=self.headers)  # fmt: skip


def client_for(tenant: Any, scopes: list[str] | None = None) -> Objects:
    return Objects(issue(tenant, scopes or ["objects:read", "objects:write"]).text)


def body(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def code(response: Any) -> str:
    return str(response.json()["error"]["code"])


@pytest.fixture
def api(acme: Any) -> Objects:
    return client_for(acme.tenant)


def test_put_get_head_delete(api: Objects) -> None:
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    created = api.put("invoices/2024/1.pdf", data)
    assert created.status_code == 201, created.content
    assert created["ETag"] == f'"{digest}"' and created.json()["size"] == len(data)
    assert api.put("invoices/2024/1.pdf", data).status_code == 200  # replaced
    got = api.get("invoices/2024/1.pdf")
    assert got.status_code == 200 and got.streaming
    assert body(got) == data
    assert got["Content-Type"] == "application/pdf" and got["X-Content-SHA256"] == digest
    assert got["Content-Length"] == str(len(data))
    assert api.get("invoices/2024/1.pdf", If_None_Match=f'"{digest}"').status_code == 304
    head = api.head("invoices/2024/1.pdf")
    assert head.status_code == 200 and head["ETag"] == f'"{digest}"'
    assert head["Content-Length"] == str(len(data))
    assert api.delete("invoices/2024/1.pdf").status_code == 204
    assert code(api.get("invoices/2024/1.pdf")) == "not_found"
    assert api.delete("invoices/2024/1.pdf").status_code == 404


def test_an_object_whose_checksum_was_shredded_has_no_etag_and_is_never_304(
    api: Objects, acme: Any
) -> None:
    from objects.services import object_checksums_shred

    assert api.put("k", b"content").status_code == 201
    object_checksums_shred(acme.tenant)  # what crypto-shredding does to the rows
    got = api.get("k")
    assert got.status_code == 200 and body(got) == b"content"
    assert not got.has_header("ETag") and not got.has_header("X-Content-SHA256")
    assert api.get("k", If_None_Match='""').status_code == 200
    assert not api.head("k").has_header("ETag")


def test_too_large_is_refused_before_reading(api: Objects, settings: Any) -> None:
    settings.KEYWARD_OBJECT_MAX_BYTES = 1000
    response = api.put("big", b"x" * 1001)
    assert response.status_code == 413 and code(response) == "too_large"
    # Refused on Content-Length before reading; a body without one is counted
    # while it streams (test_services).
    assert not StoredObject.objects.filter(key="big").exists()
    assert api.put("ok", b"x" * 1000).status_code == 201


def test_another_tenants_object_is_404(api: Objects, globex: Any) -> None:
    api.put("secret", b"acme only")
    other = client_for(globex.tenant)
    for response in (other.get("secret"), other.head("secret"), other.delete("secret")):
        assert response.status_code == 404
    assert body(api.get("secret")) == b"acme only"


def test_tokens_and_scopes(acme: Any) -> None:
    assert Objects(None).get("k").status_code == 401
    assert Objects("kw_nope_nope").put("k", b"x").status_code == 401
    reader = client_for(acme.tenant, ["objects:read"])
    response = reader.put("k", b"x")
    assert response.status_code == 403 and code(response) == "forbidden"
    assert reader.delete("k").status_code == 403
    records = client_for(acme.tenant, ["records:read", "records:write"])
    assert records.get("k").status_code == 403


def test_wrong_method_and_bad_key(api: Objects) -> None:
    response = api.post("k")
    assert response.status_code == 405 and "PUT" in response["Allow"]
    response = api.put("a//b", b"x")
    assert response.status_code == 400 and response.json()["error"]["field"] == "key"


def test_writes_answer_503_migrating_with_retry_after(api: Objects, acme: Any) -> None:
    api.put("before", b"stored before")
    set_state(acme.tenant, ServiceState.MIGRATING)
    for response in (api.put("during", b"x"), api.delete("before")):
        assert response.status_code == 503 and code(response) == "migrating"
        assert int(response["Retry-After"]) > 0
    assert body(api.get("before")) == b"stored before"  # reads serve older data
    assert not StoredObject.objects.filter(key="during").exists()


def test_a_revoked_key_is_403_key_revoked(api: Objects, acme: Any) -> None:
    api.put("k", b"x")
    set_state(acme.tenant, ServiceState.REVOKED)
    for response in (api.get("k"), api.put("k", b"y")):
        assert response.status_code == 403 and code(response) == "key_revoked"


def test_an_unreachable_key_store_is_503_key_unavailable(api: Objects, monkeypatch: Any) -> None:
    import objects.keyring
    from keys.providers.base import KeyUnavailable

    api.put("k", b"x")
    objects.keyring.forget()

    def unreachable(tenant_id: str, dek_id: int) -> Any:
        raise KeyUnavailable("the key store did not answer")

    monkeypatch.setattr(objects.keyring, "_load_dek", unreachable)
    response = api.get("k")
    assert response.status_code == 503 and code(response) == "key_unavailable"
    assert "Retry-After" in response
