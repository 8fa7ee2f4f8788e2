from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from django.core import signing

from api.audit_views import cursor_for
from api.forms import ApiTokenForm
from api.models import ApiToken
from api.tokens import api_token_revoke
from audit.chain import GENESIS_HASH
from audit.export import jsonl_stream
from audit.models import AuditEvent
from audit.services import Actor, chain_key, record
from tenants.models import ServiceState, Tenant
from tests.api.conftest import Api, issue

PATH = "audit/events"


def reader(tenant: Any) -> Api:
    return Api(issue(tenant, ["audit:read"], name="siem").text)


def add_events(tenant: Any, count: int, prefix: str = "event") -> None:
    actor = Actor.system("tests")
    for n in range(count):
        record(tenant=tenant, actor=actor, action="tests.event", target=f"{prefix} {n}")


def chain(tenant: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain_key(tenant)).order_by("seq"))


def read_all(api: Api, limit: int, after: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """Every page until a short one; the events read and the last `next`."""
    events: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = api.get(PATH, params)
        assert response.status_code == 200, response.content
        assert response["Cache-Control"] == "no-store"
        body = response.json()
        assert set(body) == {"events", "next"}
        events += body["events"]
        after = body["next"]
        if len(body["events"]) < limit:
            assert after is not None
            return events, after


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code
    assert body["message"]
    return body


def test_paging_returns_every_event_once_in_chain_order(acme: Any) -> None:
    api = reader(acme.tenant)
    add_events(acme.tenant, 250)
    stored = chain(acme.tenant)
    assert len(stored) > 250

    events, _ = read_all(api, limit=100)

    assert [e["seq"] for e in events] == [e.seq for e in stored]
    assert [e["seq"] for e in events] == list(range(1, len(stored) + 1))
    assert len({e["hash"] for e in events}) == len(events)
    assert sum(e["target"].startswith("event ") for e in events) == 250
    # The chain's continuity can be checked from the API's answer alone.
    assert events[0]["prev_hash"] == GENESIS_HASH
    for previous, event in pairwise(events):
        assert event["prev_hash"] == previous["hash"]
    assert events[-1]["hash"] == stored[-1].hash


def test_events_are_the_exports_rows(acme: Any) -> None:
    api = reader(acme.tenant)
    add_events(acme.tenant, 3)
    exported = [
        json.loads(line)
        for line in jsonl_stream(AuditEvent.objects.filter(chain=chain_key(acme.tenant)))
    ]
    body = api.get(PATH).json()
    assert body["events"] == exported


def test_default_and_largest_limits(acme: Any) -> None:
    api = reader(acme.tenant)
    add_events(acme.tenant, 1005)
    assert len(api.get(PATH).json()["events"]) == 100
    page = api.get(PATH, {"limit": 1000}).json()
    assert len(page["events"]) == 1000
    rest = api.get(PATH, {"after": page["next"], "limit": 1000}).json()
    assert rest["events"][0]["seq"] == 1001
    assert len(rest["events"]) == len(chain(acme.tenant)) - 1000


def test_another_tenants_events_never_appear(acme: Any, globex: Any) -> None:
    add_events(globex.tenant, 30, prefix="globex")
    api = reader(acme.tenant)
    add_events(acme.tenant, 5, prefix="acme")
    add_events(globex.tenant, 30, prefix="globex")

    events, _ = read_all(api, limit=7)

    assert not [e for e in events if "globex" in json.dumps(e)]
    assert [e["hash"] for e in events] == [e.hash for e in chain(acme.tenant)]


def test_a_new_event_appears_after_the_last_cursor(acme: Any) -> None:
    api = reader(acme.tenant)
    add_events(acme.tenant, 10)
    events, last = read_all(api, limit=4)

    caught_up = api.get(PATH, {"after": last}).json()
    assert caught_up == {"events": [], "next": last}

    add_events(acme.tenant, 1, prefix="later")
    page = api.get(PATH, {"after": last}).json()
    assert [e["target"] for e in page["events"]] == ["later 0"]
    assert page["events"][0]["seq"] == events[-1]["seq"] + 1
    assert page["events"][0]["prev_hash"] == events[-1]["hash"]
    assert page["next"] != last
    assert api.get(PATH, {"after": page["next"]}).json()["events"] == []


def test_reading_is_not_audited(acme: Any) -> None:
    api = reader(acme.tenant)
    before = chain(acme.tenant)
    read_all(api, limit=2)
    api.get(PATH, {"after": "nonsense"})
    assert chain(acme.tenant) == before


def test_an_empty_trail_has_no_next(db: None) -> None:
    # Every tenant service records an event; bare rows stand in for an empty chain.
    tenant = Tenant.objects.create(name="Empty", slug="empty")
    ApiToken.objects.create(
        tenant=tenant,
        name="siem",
        prefix="0123456789ab",
        secret_sha256=hashlib.sha256(b"s" * 43).digest(),
        scopes=["audit:read"],
    )
    api = Api("kw_0123456789ab_" + "s" * 43)
    assert api.get(PATH).json() == {"events": [], "next": None}
    add_events(tenant, 1)
    body = api.get(PATH).json()
    assert [e["seq"] for e in body["events"]] == [1]
    assert body["next"] is not None


def _audit(value: Any) -> str:
    return signing.dumps(value, salt="api.audit.cursor")


MALFORMED: dict[str, Callable[[], str]] = {
    "nonsense": lambda: "nonsense",
    "tampered": lambda: _audit(["x", 1])[:-2] + "xx",
    "another endpoint's": lambda: signing.dumps(1, salt="api.records.cursor"),
    "not a position": lambda: _audit(5),
    "negative": lambda: _audit(["x", -1]),
    "not a number": lambda: _audit(["x", True]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_cursor_is_refused(acme: Any, name: str) -> None:
    cursor = MALFORMED[name]()
    body = error(reader(acme.tenant).get(PATH, {"after": cursor}), 400, "invalid_cursor")
    assert body["field"] == "after"


def test_another_tenants_cursor_is_refused(acme: Any, globex: Any) -> None:
    theirs = reader(globex.tenant).get(PATH).json()["next"]
    body = error(reader(acme.tenant).get(PATH, {"after": theirs}), 400, "invalid_cursor")
    assert body["field"] == "after"
    assert "another tenant" in body["message"]
    forged = cursor_for(globex.tenant, 1)
    error(reader(acme.tenant).get(PATH, {"after": forged}), 400, "invalid_cursor")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "", "1.5", "٣"])
def test_a_limit_out_of_range_is_refused(acme: Any, limit: str) -> None:
    body = error(reader(acme.tenant).get(PATH, {"limit": limit}), 400, "invalid_field")
    assert body["field"] == "limit"
    assert "1 to 1000" in body["message"]


def test_a_token_without_the_scope_is_forbidden(acme: Any) -> None:
    api = Api(issue(acme.tenant, ["records:read", "records:write", "objects:read"]).text)
    body = error(api.get(PATH), 403, "forbidden")
    assert "audit:read" in body["message"]


def test_no_or_an_invalid_token_is_unauthorized(acme: Any) -> None:
    response = Api(None).get(PATH)
    error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"] == "Bearer"
    error(Api("kw_000000000000_" + "a" * 43).get(PATH), 401, "unauthorized")
    issued = issue(acme.tenant, ["audit:read"])
    api_token_revoke(tenant=acme.tenant, token=issued.token, actor=Actor.system("tests"))
    error(Api(issued.text).get(PATH), 401, "unauthorized")


def test_only_get_is_answered(acme: Any) -> None:
    response = reader(acme.tenant).post(PATH, {})
    error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET"


def test_the_trail_stays_readable_when_the_key_is_revoked(acme: Any) -> None:
    api = reader(acme.tenant)
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.REVOKED)
    response = api.get(PATH)
    assert response.status_code == 200
    assert response.json()["events"]


def test_a_token_for_the_trail_is_made_like_any_other_and_audited(acme: Any) -> None:
    # The Data page's token form offers the scope.
    assert ApiTokenForm({"name": "siem", "scopes": ["audit:read"]}).is_valid()
    issued = issue(acme.tenant, ["audit:read"], name="siem")
    created = chain(acme.tenant)[-1]
    assert created.action == "api_token.create"
    assert created.details["scopes"] == ["audit:read"]
    assert issued.token.scopes == ["audit:read"]
