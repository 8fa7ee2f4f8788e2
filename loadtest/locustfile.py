"""Locust users for `make loadtest`: API clients writing and reading records and
objects, and console users paging the Keys, Data and Audit pages.

Configured by the harness (loadtest/test_load.py) through the environment. Every
acknowledged write is appended to LOADTEST_ACKS, so that the harness can read
each one back afterwards; every answer that is not a success is a failure named
by its status code, so that the run's failures table counts errors by code.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, between, task

TOKEN = os.environ.get("LOADTEST_TOKEN", "")
SLUG = os.environ.get("LOADTEST_SLUG", "acme")
ACKS = os.environ.get("LOADTEST_ACKS", "acks.jsonl")
CONSOLE_EMAIL = os.environ.get("LOADTEST_CONSOLE_EMAIL", "")
CONSOLE_PASSWORD = os.environ.get("LOADTEST_CONSOLE_PASSWORD", "")


def _ack(kind: str, **fields: Any) -> None:
    with Path(ACKS).open("a", encoding="utf-8") as acks:
        acks.write(json.dumps({"kind": kind, **fields}) + "\n")


def _judge(response: Any, *ok: int) -> bool:
    """A success, or a failure named by status and the API's error code ("403 key_revoked")."""
    if response.status_code in ok:
        response.success()
        return True
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "no error body"
    response.failure(f"{response.status_code} {code}")
    return False


class ApiClient(HttpUser):
    fixed_count = 50
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {TOKEN}"
        self.records: list[str] = []
        self.objects: list[str] = []

    @task(4)
    def create_record(self) -> None:
        key = str(uuid.uuid4())
        external = f"load-{uuid.uuid4().hex[:12]}"
        body = {"kind": "user", "external_id": external, "fields": {"email": f"{external}@l.test"}}
        with self.client.post(
            "/api/v1/records",
            json=body,
            headers={"Idempotency-Key": key},
            name="POST records",
            catch_response=True,
        ) as response:
            if _judge(response, 201):
                uid = response.json()["id"]
                self.records.append(uid)
                _ack("record", id=uid, idempotency_key=key, fields=body["fields"])

    @task(4)
    def read_record(self) -> None:
        if not self.records:
            return
        uid = random.choice(self.records)
        with self.client.get(
            f"/api/v1/records/{uid}", name="GET records/:id", catch_response=True
        ) as response:
            _judge(response, 200)

    @task(2)
    def list_records(self) -> None:
        with self.client.get(
            "/api/v1/records?limit=20", name="GET records", catch_response=True
        ) as response:
            _judge(response, 200)

    @task(1)
    def put_object(self) -> None:
        key = f"load/{uuid.uuid4().hex}.bin"
        body = os.urandom(random.randint(1024, 16 * 1024))
        with self.client.put(
            f"/api/v1/objects/{key}",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            name="PUT objects/:key",
            catch_response=True,
        ) as response:
            if _judge(response, 200, 201):
                self.objects.append(key)
                _ack("object", key=key, size=len(body), sha256=hashlib.sha256(body).hexdigest())

    @task(2)
    def get_object(self) -> None:
        if not self.objects:
            return
        key = random.choice(self.objects)
        with self.client.get(
            f"/api/v1/objects/{key}", name="GET objects/:key", catch_response=True
        ) as response:
            _judge(response, 200)


class ConsoleUser(HttpUser):
    fixed_count = 5
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.client.get("/login/", name="GET login")
        token = self.client.cookies.get("csrftoken", "")
        self.client.post(
            "/login/",
            data={"username": CONSOLE_EMAIL, "password": CONSOLE_PASSWORD},
            headers={"X-CSRFToken": token, "Referer": f"{self.host}/login/"},
            name="POST login",
        )

    def _page(self, path: str, name: str) -> None:
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code == 200 and "/login/" in response.url:
                response.failure("signed out")
            else:
                _judge(response, 200)

    @task
    def keys_page(self) -> None:
        self._page(f"/t/{SLUG}/keys/", "GET keys page")

    @task
    def data_page(self) -> None:
        self._page(f"/t/{SLUG}/data/", "GET data page")

    @task
    def audit_page(self) -> None:
        self._page(f"/t/{SLUG}/audit/", "GET audit page")
