"""The ingest benchmark's unencrypted baselines live in bench/ only."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.urls import resolve

from records.fields import NewRecord
from records.models import LookupRow, SealedFields
from records.pii import encode_fields
from tests.console.test_settings import production_env, run_manage  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["console", "records", "objects", "api", "keys", "tenants", "audit", "crypto"]


def test_no_production_module_reads_a_benchmark_switch() -> None:
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            assert "BENCH_PLAINTEXT" not in text, source
            assert "plain_settings" not in text and "plainapi" not in text, source
            assert "bare_settings" not in text and "bareapi" not in text, source


def test_the_baseline_settings_refuse_production_mode(
    production_env: dict[str, str],  # noqa: F811
) -> None:
    for settings in ("bench.plain_settings", "bench.bare_settings"):
        result = run_manage({**production_env, "DJANGO_SETTINGS_MODULE": settings}, "check")
        assert result.returncode != 0
        assert "benchmarks only, never in production" in result.stderr
    assert run_manage(production_env, "check").returncode == 0


@pytest.mark.django_db
def test_the_baseline_serves_the_records_api_without_encryption(acme: Any) -> None:
    from bench import plainapi
    from records import api_views

    for path, production in [
        ("/api/v1/records/batch", api_views.record_create_batch),
        ("/api/v1/records", api_views.record_create),
    ]:
        assert resolve(path, urlconf="bench.plain_urls").func is not production
        assert resolve(path).func is production or path == "/api/v1/records"
    item = NewRecord(kind="user", external_id="u-1", fields={"email": "ada@example.com"})
    (row,) = plainapi.records_create_plain(tenant=acme.tenant, items=[item])
    assert bytes(SealedFields.objects.get(record=row).pii) == encode_fields(item.fields)
    lookup = LookupRow.objects.get(record=row, field="email")
    assert lookup.version == 0
    assert bytes(lookup.digest) == hashlib.sha256(b"email\x00ada@example.com").digest()


@pytest.mark.django_db
def test_the_bare_baseline_checks_the_token_and_stores_with_one_insert(acme: Any) -> None:
    """bench.bareapi: what a user would write; one token lookup and one INSERT."""
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from records.models import Record
    from tests.api.conftest import issue

    token = issue(acme.tenant).text
    body = {"kind": "user", "external_id": "b-1", "fields": {"email": "ada@example.com"}}
    with override_settings(ROOT_URLCONF="bench.bare_urls"):
        client = Client()
        refused = client.post(
            "/api/v1/records",
            body,
            content_type="application/json",
            headers={"Authorization": "Bearer kw_000000000000_" + "x" * 43},
        )
        assert refused.status_code == 401
        with CaptureQueriesContext(connection) as queries:
            response = client.post(
                "/api/v1/records",
                body,
                content_type="application/json",
                headers={"Authorization": f"Bearer {token}"},
            )
    assert response.status_code == 201
    assert len(queries) == 3  # the token, the DEK id (once per process), the INSERT
    row = Record.objects.get(tenant=acme.tenant, external_id="b-1")
    lookup = LookupRow.objects.get(record=row, field="email")
    assert bytes(lookup.digest) == hashlib.sha256(b"email\x00ada@example.com").digest()
