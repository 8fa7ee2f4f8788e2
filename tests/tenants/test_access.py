"""Vendor support's access to a tenant's data: the tenant's side and the rules."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from tenants.access import (
    AccessRefused,
    access_expire_due,
    access_grant_end,
    access_request_approve,
    access_request_create,
    access_request_deny,
    active_grant,
    tenant_set_support_access,
)
from tenants.models import AccessRequest, AccessState, Membership, Role, SupportAccess
from tenants.services import membership_add
from tests.conftest import login, make_user

pytestmark = pytest.mark.django_db


def ask(tenant: Any, support: Any, **overrides: Any) -> AccessRequest:
    fields: dict[str, Any] = {
        "reason": "customer_case",
        "case_reference": "CASE-42",
        "justification": "The customer reports missing records since Monday.",
        "scopes": ["records:read", "objects:read"],
        "hours": 2,
    }
    fields.update(overrides)
    return access_request_create(tenant=tenant, requester=support, **fields)


def actions(tenant: Any) -> list[tuple[str, str]]:
    return list(
        AuditEvent.objects.filter(tenant_id=tenant.pk, action__startswith="access.")
        .order_by("seq")
        .values_list("action", "outcome")
    )


def test_a_request_emails_the_approvers_and_approval_opens_a_window(
    acme, support, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        asked = ask(acme.tenant, support)
    assert asked.state == AccessState.PENDING
    assert mail.outbox[-1].to == [acme.owner.email]
    assert "CASE-42" in mail.outbox[-1].body and "/t/acme/access/" in mail.outbox[-1].body
    with pytest.raises(AccessRefused, match="no open grant"):
        active_grant(acme.tenant, support, "records:read")

    with django_capture_on_commit_callbacks(execute=True):
        granted = access_request_approve(
            access_request=asked, approver=acme.owner, comment="ok for today"
        )
    assert granted.state == AccessState.APPROVED
    assert granted.ends_at is not None
    assert timedelta(hours=2) - (granted.ends_at - timezone.now()) < timedelta(seconds=5)
    assert active_grant(acme.tenant, support, "objects:read") == granted
    assert mail.outbox[-1].to == [support.email] and "approved" in mail.outbox[-1].subject
    assert actions(acme.tenant) == [("access.request", "success"), ("access.approve", "success")]


def test_two_approvals_when_the_tenant_asks_for_them(acme, support) -> None:
    owner2 = make_user("owner2@acme.test")
    membership_add(tenant=acme.tenant, user=owner2, role=Role.OWNER, actor=Actor.system("t"))
    tenant_set_support_access(
        tenant=acme.tenant,
        actor=Actor.system("t"),
        policy=SupportAccess.ON_APPROVAL,
        approvals=2,
        max_hours=8,
        approver_ids=[],
    )
    asked = ask(acme.tenant, support)
    first = access_request_approve(access_request=asked, approver=acme.owner, comment="")
    assert first.state == AccessState.PENDING and first.ends_at is None
    with pytest.raises(AccessRefused, match="answered this request already"):
        access_request_approve(access_request=asked, approver=acme.owner, comment="")
    second = access_request_approve(access_request=asked, approver=owner2, comment="")
    assert second.state == AccessState.APPROVED


def test_a_named_approver_answers_and_a_plain_viewer_may_not(acme, support) -> None:
    asked = ask(acme.tenant, support)
    with pytest.raises(AccessRefused, match="owners and named approvers"):
        access_request_approve(access_request=asked, approver=acme.viewer, comment="")
    viewer = Membership.objects.get(user=acme.viewer)
    tenant_set_support_access(
        tenant=acme.tenant,
        actor=Actor.system("t"),
        policy=SupportAccess.ON_APPROVAL,
        approvals=1,
        max_hours=8,
        approver_ids=[str(viewer.pk)],
    )
    denied = access_request_deny(access_request=asked, approver=acme.viewer, comment="not now")
    assert denied.state == AccessState.DENIED
    assert denied.decisions.get().comment == "not now"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"justification": " "}, "say why you need the data"),
        ({"case_reference": ""}, "case reference"),
        ({"reason": "curiosity"}, "Choose why"),
        ({"scopes": []}, "Choose what you need"),
        ({"scopes": ["records:write"]}, "Choose what you need"),
        ({"hours": 9}, "Ask for 1 to 8 hours"),
        ({"hours": 0}, "Ask for 1 to 8 hours"),
    ],
)
def test_a_bad_request_is_refused_and_nothing_is_stored(
    acme, support, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(AccessRefused, match=message):
        ask(acme.tenant, support, **overrides)
    assert not AccessRequest.objects.exists()


def test_only_support_staff_ask_and_one_open_request_at_a_time(acme, support) -> None:
    with pytest.raises(AccessRefused, match="Only vendor support staff"):
        ask(acme.tenant, acme.owner)
    ask(acme.tenant, support)
    with pytest.raises(AccessRefused, match="open request or grant"):
        ask(acme.tenant, support)


def test_a_tenant_that_never_allows_access_refuses_and_closes_what_is_open(acme, support) -> None:
    asked = ask(acme.tenant, support)
    access_request_approve(access_request=asked, approver=acme.owner, comment="")
    tenant_set_support_access(
        tenant=acme.tenant,
        actor=Actor.system("t"),
        policy=SupportAccess.NEVER,
        approvals=1,
        max_hours=8,
        approver_ids=[],
    )
    asked.refresh_from_db()
    assert asked.state == AccessState.ENDED
    with pytest.raises(AccessRefused, match="no open grant"):
        active_grant(acme.tenant, support, "records:read")
    with pytest.raises(AccessRefused, match="never allows"):
        ask(acme.tenant, support, case_reference="CASE-43")


def test_approving_ones_own_request_is_refused(acme, support) -> None:
    membership_add(tenant=acme.tenant, user=support, role=Role.OWNER, actor=Actor.system("t"))
    asked = ask(acme.tenant, support)
    with pytest.raises(AccessRefused, match="someone else must answer"):
        access_request_approve(access_request=asked, approver=support, comment="")
    asked.refresh_from_db()
    assert asked.state == AccessState.PENDING and not asked.decisions.exists()


def test_an_unanswered_request_expires_and_takes_no_answer(acme, support) -> None:
    asked = ask(acme.tenant, support)
    AccessRequest.objects.filter(pk=asked.pk).update(answer_by=timezone.now())
    asked.refresh_from_db()
    with pytest.raises(AccessRefused, match="expired"):
        access_request_approve(access_request=asked, approver=acme.owner, comment="")
    assert access_expire_due() == 1
    asked.refresh_from_db()
    assert asked.state == AccessState.EXPIRED
    assert ("access.expire", "success") in actions(acme.tenant)


def test_a_grant_ends_on_time_or_when_an_owner_ends_it(acme, globex, support) -> None:
    asked = ask(acme.tenant, support)
    access_request_approve(access_request=asked, approver=acme.owner, comment="")
    with pytest.raises(AccessRefused, match="Only the tenant's owners"):
        access_grant_end(access_request=asked, owner=globex.owner)
    with pytest.raises(AccessRefused, match="Only the tenant's owners"):
        access_grant_end(access_request=asked, owner=acme.key_admin)
    access_grant_end(access_request=asked, owner=acme.owner)
    with pytest.raises(AccessRefused, match="no open grant"):
        active_grant(acme.tenant, support, "records:read")
    with pytest.raises(AccessRefused, match="over already"):
        access_grant_end(access_request=asked, owner=acme.owner)

    again = ask(acme.tenant, support, case_reference="CASE-44")
    access_request_approve(access_request=again, approver=acme.owner, comment="")
    AccessRequest.objects.filter(pk=again.pk).update(ends_at=timezone.now())
    # Reads check the end time itself: refused before the beat task ran.
    with pytest.raises(AccessRefused, match="no open grant"):
        active_grant(acme.tenant, support, "records:read")
    assert access_expire_due() == 1
    again.refresh_from_db()
    assert again.state == AccessState.FINISHED


def test_two_approvals_need_two_approvers(acme) -> None:
    with pytest.raises(AccessRefused, match="at least two approvers"):
        tenant_set_support_access(
            tenant=acme.tenant,
            actor=Actor.system("t"),
            policy=SupportAccess.ON_APPROVAL,
            approvals=2,
            max_hours=8,
            approver_ids=[],
        )
    acme.tenant.refresh_from_db()
    assert acme.tenant.support_approvals == 1


def test_the_access_page_answers_and_refuses_with_reasons(acme, support) -> None:
    asked = ask(acme.tenant, support)
    owner = login(acme.owner, sudo=True)
    page = owner.get("/t/acme/access/")
    assert page.status_code == 200 and b"CASE-42" in page.content
    # A viewer is no approver: 403, recorded.
    viewer = login(acme.viewer, sudo=True)
    assert viewer.post(f"/t/acme/access/{asked.pk}/approve/").status_code == 403
    assert ("access.answer", "denied") in actions(acme.tenant)
    approved = owner.post(f"/t/acme/access/{asked.pk}/approve/", {"comment": "go"}, follow=True)
    assert b"Access granted to support@vendor.test until" in approved.content
    denied_late = owner.post(f"/t/acme/access/{asked.pk}/deny/", follow=True)
    assert b"This request is approved: it takes no answer now." in denied_late.content
    # The banner on every page of the tenant.
    assert b"Vendor support can read your data until" in owner.get("/t/acme/").content
    ended = owner.post(f"/t/acme/access/{asked.pk}/end/", follow=True)
    assert b"access ended now" in ended.content


def test_settings_form_refuses_bad_input_and_changes_nothing(acme) -> None:
    owner = login(acme.owner, sudo=True)
    for data in (
        {"policy": "sometimes", "approvals": "1", "max_hours": "8"},
        {"policy": "never", "approvals": "3", "max_hours": "8"},
        {"policy": "never", "approvals": "1", "max_hours": "73"},
        {"policy": "never", "approvals": "1", "max_hours": "8", "approvers": ["nobody"]},
    ):
        answer = owner.post("/t/acme/access/settings/", data, follow=True)
        assert b"Nothing changed." in answer.content, data
    acme.tenant.refresh_from_db()
    assert acme.tenant.support_access == SupportAccess.ON_APPROVAL
    assert not AuditEvent.objects.filter(action="access.settings").exists()
