"""The request id: kept when sane, made up otherwise, and on every event a request causes."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from audit.models import AuditEvent
from audit.services import Actor, audit_verify_chain, chain_key, record
from telemetry.context import current_request_id, request_id_set
from tenants.models import Tenant


def test_an_event_recorded_without_the_request_still_carries_its_id(db) -> None:
    tenant = Tenant.objects.create(name="T", slug="t")
    with request_id_set("req-00000000abcdef"):
        inside = record(tenant=tenant, actor=Actor.system(), action="test.inside")
    outside = record(tenant=tenant, actor=Actor.system(), action="test.outside")
    assert inside.request_id == "req-00000000abcdef"
    assert outside.request_id == ""
    assert current_request_id() == ""
    # The id is part of the hashed event: the chain verifies, and altering it would not.
    assert audit_verify_chain(chain_key(tenant)) is None


@pytest.mark.parametrize(
    "incoming",
    ["", "short", "x" * 65, "has space in it", "newline\ninjected-1234", "ünïcode-1234567"],
)
def test_an_unusable_incoming_id_is_replaced_by_a_new_one(db, incoming) -> None:
    response = Client().get("/healthz", headers={"X-Request-ID": incoming})
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])


def test_a_sane_incoming_id_is_kept_and_reaches_the_trail(db) -> None:
    Client().post(
        "/login/",
        {"username": "nobody@example.com", "password": "wrong"},
        headers={"X-Request-ID": "lb-7f3a9c21.trace_ok"},
    )
    event = AuditEvent.objects.filter(action__startswith="auth.").latest("time")
    assert event.request_id == "lb-7f3a9c21.trace_ok"
