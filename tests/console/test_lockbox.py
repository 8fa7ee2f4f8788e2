"""Vendor support's side of the lockbox: ask, then read only while a grant is open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit.models import AuditEvent
from objects import keyring, locations
from objects.models import StoredObject
from objects.services import object_put
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.access import access_grant_end, access_request_approve
from tenants.models import AccessRequest, AccessState, ServiceState, SupportAccess, Tenant
from tests.conftest import login

pytestmark = pytest.mark.django_db

REQUEST = {
    "reason": "incident",
    "case_reference": "INC-7",
    "justification": "Exports fail to open for the customer.",
    "scopes": ["records:read", "objects:read"],
    "hours": "1",
}


@pytest.fixture(autouse=True)
def _objects(settings: Any, tmp_path: Path) -> None:
    settings.KEYWARD_OBJECT_ROOT = tmp_path / "objects"
    locations.forget()
    keyring.forget()


@pytest.fixture
def stored(acme) -> dict[str, Any]:
    rows = records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    obj = object_put(
        tenant=acme.tenant, key="exports/a.csv", chunks=[b"a,b\n1,2\n"], content_type="text/csv"
    )
    return {"records": rows, "object": obj}


def granted(acme, support) -> AccessRequest:
    client = login(support, sudo=True)
    answer = client.post("/support/t/acme/access/request/", REQUEST)
    assert answer.status_code == 302, answer.content
    asked = AccessRequest.objects.get(tenant=acme.tenant)
    return access_request_approve(access_request=asked, approver=acme.owner, comment="")


def reads(tenant: Tenant) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(tenant_id=tenant.pk, action__startswith="access.read").order_by(
            "seq"
        )
    )


def test_with_a_grant_support_reads_records_and_objects_and_each_read_is_recorded(
    acme, support, stored
) -> None:
    grant = granted(acme, support)
    client = login(support, sudo=True)
    page = client.get("/support/t/acme/data/")
    assert page.status_code == 200
    fields = stored["records"][0]
    assert str(fields.uid).encode() in page.content
    assert b"INC-7" in page.content
    download = client.get(f"/support/t/acme/data/objects/{stored['object'].pk}/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b"a,b\n1,2\n"  # type: ignore[attr-defined]
    events = reads(acme.tenant)
    assert [e.action for e in events] == ["access.read_records", "access.read_object"]
    assert all(e.details["grant"] == str(grant.pk) for e in events)
    assert all(e.actor_kind == "support" and e.outcome == "success" for e in events)
    assert events[0].details["records"] == [str(r.uid) for r in stored["records"]]


def test_without_a_grant_reads_are_refused_and_recorded(acme, support, stored) -> None:
    client = login(support, sudo=True)
    page = client.get("/support/t/acme/data/")
    assert page.status_code == 403
    assert b"no open grant" in page.content
    assert client.get(f"/support/t/acme/data/objects/{stored['object'].pk}/").status_code == 403
    assert [(e.action, e.outcome) for e in reads(acme.tenant)] == [
        ("access.read_records", "denied"),
        ("access.read_object", "denied"),
    ]


def test_the_next_read_after_the_owner_ends_the_grant_is_refused(acme, support, stored) -> None:
    grant = granted(acme, support)
    client = login(support, sudo=True)
    assert client.get("/support/t/acme/data/").status_code == 200
    access_grant_end(access_request=grant, owner=acme.owner)
    assert client.get("/support/t/acme/data/").status_code == 403


def test_a_grant_does_not_reach_past_a_revoked_key(acme, support, stored) -> None:
    granted(acme, support)
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.REVOKED)
    page = login(support, sudo=True).get("/support/t/acme/data/")
    assert page.status_code == 403
    assert b"cannot be read, with or without a grant" in page.content


def test_a_grant_reads_only_its_scopes(acme, support, stored) -> None:
    client = login(support, sudo=True)
    client.post("/support/t/acme/access/request/", {**REQUEST, "scopes": ["objects:read"]})
    asked = AccessRequest.objects.get(tenant=acme.tenant)
    access_request_approve(access_request=asked, approver=acme.owner, comment="")
    page = client.get("/support/t/acme/data/")
    assert page.status_code == 200
    assert b'data-testid="support-records"' not in page.content
    assert b"exports/a.csv" in page.content


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"justification": ""}, b"This field is required."),
        ({"scopes": []}, b"Choose what you need to read."),
        ({"hours": "99"}, b"less than or equal to 72"),
        ({"hours": "9"}, b"Ask for 1 to 8 hours"),
        ({"reason": "because"}, b"Select a valid choice."),
    ],
)
def test_a_bad_request_form_says_why_and_stores_nothing(
    acme, support, change: dict[str, Any], message: bytes
) -> None:
    answer = login(support, sudo=True).post(
        "/support/t/acme/access/request/", {**REQUEST, **change}
    )
    assert answer.status_code == 400
    assert message in answer.content
    assert not AccessRequest.objects.exists()


def test_a_tenant_that_never_allows_access_shows_no_form_and_refuses(acme, support) -> None:
    Tenant.objects.filter(pk=acme.tenant.pk).update(support_access=SupportAccess.NEVER)
    client = login(support, sudo=True)
    page = client.get("/support/t/acme/access/request/")
    assert b'data-testid="never-allowed"' in page.content
    assert b"access-request-form" not in page.content
    refused = client.post("/support/t/acme/access/request/", REQUEST)
    assert refused.status_code == 400 and b"never allows" in refused.content
    assert not AccessRequest.objects.exists()
    assert AuditEvent.objects.filter(action="access.request", outcome="denied").count() == 1


def test_the_owner_sees_each_read_in_the_trail(acme, support, stored) -> None:
    granted(acme, support)
    login(support, sudo=True).get("/support/t/acme/data/")
    trail = login(acme.owner).get("/t/acme/audit/").content
    assert b"access.read_records" in trail and b"support@vendor.test" in trail
    assert AccessRequest.objects.get().state == AccessState.APPROVED
    assert StoredObject.objects.count() == 1
