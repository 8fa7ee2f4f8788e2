"""Structured logs: one JSON line per request, carrying its id; no key, token or password."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from audit.models import AuditEvent
from console.logs import JsonFormatter
from crypto.ciphertext import field_key
from keys.models import DataKey, DekState
from keys.registry import provider_for
from keys.rootkey import root_key_file
from keys.runtime import dek_context
from objects import keyring, locations
from records.indexkeys import index_context
from records.models import IndexKey
from tenants.models import Tenant

DEMO_PASSWORD = "demo password for the log test"
WRONG_PASSWORD = "not the demo password, but close"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything logged at INFO and above (the default level), through the real formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def demo(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: None) -> None:
    settings.KEYWARD_OBJECT_ROOT = tmp_path / "objects"
    monkeypatch.setenv("KEYWARD_DEMO_PASSWORD", DEMO_PASSWORD)
    locations.forget()
    keyring.forget()


def spellings(secret: bytes) -> set[str]:
    """How key bytes could show up in text."""
    return {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    }


def tenant_key_bytes(tenant: Tenant) -> list[bytes]:
    """Every data key and lookup key of the tenant, unwrapped, and the derived field keys."""
    found = []
    for dek in DataKey.objects.filter(tenant=tenant).exclude(state=DekState.DESTROYED):
        material = provider_for(dek.kek_version.source).unwrap(
            bytes(dek.wrapped),
            dek_context(str(tenant.pk), dek.version),
            dek.kek_version.provider_version,
        )
        found += [material, field_key(material)]
    for index_key in IndexKey.objects.filter(tenant=tenant).exclude(wrapped=b""):
        found.append(
            provider_for(index_key.kek_version.source).unwrap(
                bytes(index_key.wrapped),
                index_context(str(tenant.pk), index_key.version),
                index_key.kek_version.provider_version,
            )
        )
    assert all(len(key) == 32 for key in found)
    return found


def test_the_demo_flows_log_json_lines_and_no_secret(demo, log_output) -> None:
    call_command("seed_demo", stdout=io.StringIO())
    acme = Tenant.objects.get(slug="acme")

    # A wrong password, then the right one: the console signs the owner in.
    browser = Client()
    refused = browser.post(
        "/login/", {"username": "owner@acme.example", "password": WRONG_PASSWORD}
    )
    assert refused.status_code == 200
    signed_in = browser.post(
        "/login/", {"username": "owner@acme.example", "password": DEMO_PASSWORD}
    )
    assert signed_in.status_code == 302
    assert browser.get("/t/acme/").status_code == 200

    # An API token, made on the Data page (shown once), then writes and reads with it.
    page = browser.post(
        "/t/acme/data/tokens/", {"name": "log test", "scopes": ["records:read", "records:write"]}
    )
    assert page.status_code == 200
    (token,) = re.findall(r"kw_[0-9a-f]+_[A-Za-z0-9_-]+", page.content.decode())
    api = Client(headers={"Authorization": f"Bearer {token}"})
    created = api.post(
        "/api/v1/records",
        {"kind": "user", "external_id": "u-log", "fields": {"email": "grace@example.com"}},
        content_type="application/json",
        headers={"X-Request-ID": "trace-0123456789abcdef"},
    )
    assert created.status_code == 201
    assert created["X-Request-ID"] == "trace-0123456789abcdef"
    uid = created.json()["id"]
    assert api.get(f"/api/v1/records/{uid}").status_code == 200
    found = api.get("/api/v1/records", {"field": "email", "value": "grace@example.com"})
    assert found.status_code == 200 and found.json()["data"]
    assert api.delete(f"/api/v1/records/{uid}").status_code == 204

    # A key action: a new data key from the Keys page.
    rotated = browser.post("/t/acme/keys/rotate/", {"reason": "log test"})
    assert rotated.status_code == 302

    output = log_output.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)

    requests = [line for line in lines if line.get("event") == "request"]
    routes = {line["route"] for line in requests}
    assert {"login", "console:dashboard", "data:token_create", "api:records", "api:record"} <= (
        routes
    )
    assert "keys:rotate_dek" in routes
    for line in requests:
        assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", line["request_id"])
        assert isinstance(line["status"], int) and line["duration_ms"] >= 0
    write = next(line for line in requests if line["route"] == "api:records")
    assert write["request_id"] == "trace-0123456789abcdef"
    assert write["tenant"] == "acme" and write["actor"].startswith("api:")
    assert write["status"] == 201 and write["method"] == "POST"
    rotate = next(line for line in requests if line["route"] == "keys:rotate_dek")
    owner_pk = Tenant.objects.get(slug="acme").memberships.get(role="owner").user_id
    assert rotate["actor"] == f"user:{owner_pk}" and rotate["tenant"] == "acme"
    # The id reached the audit trail of the request's event.
    deleted = AuditEvent.objects.get(tenant=acme, action="record.delete")
    assert deleted.request_id == next(
        line["request_id"] for line in requests if line["method"] == "DELETE"
    )

    secrets = {DEMO_PASSWORD, WRONG_PASSWORD, token, token.rsplit("_", 1)[1], "grace@example.com"}
    keys = tenant_key_bytes(acme) + tenant_key_bytes(Tenant.objects.get(slug="globex"))
    root = root_key_file()
    root.ensure()
    keys += list(root._raw.values())  # the vendor root keys themselves
    assert len(keys) >= 6
    for secret in secrets:
        assert secret not in output
    for key in keys:
        for text in spellings(key):
            assert text not in output


def test_djangos_own_line_about_a_refused_request_carries_its_id(db, settings, log_output) -> None:
    settings.KEYWARD_METRICS_TOKEN = "t" * 40
    response = Client().get("/metrics")
    assert response.status_code == 401
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    (refused,) = [line for line in lines if line["logger"] == "django.request"]
    assert refused["request_id"] == response["X-Request-ID"]
    assert refused["status_code"] == 401 and refused["level"] == "WARNING"
    (line,) = [line for line in lines if line.get("event") == "request"]
    assert line["request_id"] == response["X-Request-ID"]
    assert (line["route"], line["status"], line["actor"]) == ("metrics", 401, "anonymous")
