"""Run by tests/api/test_idempotency.py in a process of its own, on `make run`'s
embedded SQLite database: creates with an Idempotency-Key, one and in a batch,
retried, reused with another body, and failing. Prints what each answered."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from api.models import IdempotencyKey
    from api.tokens import api_token_create
    from audit.services import Actor
    from records.models import Record
    from tenants.services import tenant_create

    call_command("migrate", verbosity=0, interactive=False)
    tenant = tenant_create(name="Embedded", slug="embedded", actor=Actor.system("test"))
    token = api_token_create(
        tenant=tenant, name="t", scopes=["records:write", "records:read"], actor=Actor.system("t")
    ).text
    client = Client(HTTP_HOST="localhost")

    def post(path: str, body: object, key: str) -> list[object]:
        response = client.post(
            f"/api/v1/{path}",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
            HTTP_IDEMPOTENCY_KEY=key,
        )
        ids = response.json().get("id") or [r["id"] for r in response.json().get("records", [])]
        return [response.status_code, response.get("Idempotent-Replayed"), ids]

    one = {"kind": "user", "external_id": "u-1", "fields": {"email": "a@example.com"}}
    many = {"records": [{**one, "external_id": f"b-{n}"} for n in range(3)]}
    answers = {
        "vendor": connection.vendor,
        "first": post("records", one, "k-1"),
        "retry": post("records", one, "k-1"),
        "other body": post("records", {**one, "external_id": "u-2"}, "k-1")[0],
        "duplicate": post("records", one, "k-2")[0],
        "batch": post("records/batch", many, "k-3"),
        "batch retry": post("records/batch", many, "k-3"),
        "records": Record.objects.filter(tenant=tenant).count(),
        "keys": sorted(IdempotencyKey.objects.filter(tenant=tenant).values_list("key", flat=True)),
    }
    sys.stdout.write(json.dumps(answers))


if __name__ == "__main__":
    main()
