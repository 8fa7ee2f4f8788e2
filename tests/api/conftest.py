from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from api.tokens import IssuedToken, api_token_create
from audit.services import Actor

# The customer-key fixtures (LocalStack as AWS KMS) of the keys tests.
from tests.keys.conftest import aws_env, byok  # noqa: F401
from tests.keys.test_aws_kms_provider import fake_aws  # noqa: F401

ALL_SCOPES = ["objects:read", "objects:write", "records:read", "records:write"]


def issue(tenant: Any, scopes: list[str] | None = None, **kwargs: Any) -> IssuedToken:
    return api_token_create(
        tenant=tenant,
        actor=Actor.system("tests"),
        name=kwargs.pop("name", "tests"),
        scopes=scopes or ["records:read", "records:write"],
        **kwargs,
    )


class Api:
    """A JSON client for /api/v1/ with a bearer token."""

    def __init__(self, text: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {text}"} if text else {}

    def _h(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {**self.headers, **(extra or {})}

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post(
            f"/api/v1/{path}", data=data, content_type="application/json", headers=self._h(headers)
        )

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.client.get(f"/api/v1/{path}", params or {}, headers=self.headers)

    def delete(self, path: str) -> Any:
        return self.client.delete(f"/api/v1/{path}", headers=self.headers)


@pytest.fixture
def api(acme: Any) -> Api:
    """acme's client with records:read and records:write."""
    return Api(issue(acme.tenant).text)


@pytest.fixture
def api_for() -> Callable[..., Api]:
    def make(tenant: Any, scopes: list[str] | None = None) -> Api:
        return Api(issue(tenant, scopes).text)

    return make


def user_record(external_id: str = "u-1", **fields: str) -> dict[str, Any]:
    return {
        "kind": "user",
        "external_id": external_id,
        "fields": fields or {"email": "Ada@Example.com", "full_name": "Ada Lovelace"},
    }
