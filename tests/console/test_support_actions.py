"""Support actions: each one's effect, its audit event (a support action, the engineer
named, on the customer's Audit page) and its refusals."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from audit.models import ActorKind, AuditEvent, Outcome
from audit.services import Actor
from keys.models import DataKey
from objects.models import Direction, Location, MigrationState, ObjectMigration
from telemetry.metrics import AUDIT_APPENDS
from tenants.models import ServiceState, Tenant
from tests.conftest import TenantUsers, login

SYSTEM = Actor.system("tests")
ACTIONS = ("health_check", "retry_move", "remind_rotation", "addon_enable", "addon_disable")


def url(action: str, slug: str = "acme") -> str:
    return reverse(f"support:{action}", args=[slug])


def last_event(tenant: Tenant) -> AuditEvent:
    return AuditEvent.objects.filter(tenant=tenant).order_by("-seq").first()  # type: ignore[return-value]


def set_state(tenant: Tenant, state: str) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(state=state)


def messages_of(response: Any) -> str:
    return " ".join(str(m) for m in response.wsgi_request._messages)


def assert_support_event(tenant: Tenant, action: str, support: Any, outcome: str) -> AuditEvent:
    event = last_event(tenant)
    assert (event.action, event.outcome) == (action, outcome)
    assert event.actor_kind == ActorKind.SUPPORT
    assert event.actor_display == support.get_username()
    return event


def enqueued(callbacks: list[Any]) -> list[Any]:
    """The after-commit callbacks but the audit metric's (an event is counted on commit)."""

    def counts_an_event(callback: Any) -> bool:
        owner = getattr(callback, "__self__", None)
        return getattr(owner, "_name", None) == AUDIT_APPENDS._name

    return [c for c in callbacks if not counts_an_event(c)]


def test_health_check_now_enqueues_the_check_after_commit(
    acme: TenantUsers, support, django_capture_on_commit_callbacks
) -> None:
    set_state(acme.tenant, ServiceState.BYOK_ACTIVE)
    # Sent to the real broker after commit (the browser test runs it with a worker).
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = login(support).post(url("health_check"))
    assert response.status_code == 302 and response["Location"] == "/support/t/acme/"
    assert len(enqueued(callbacks)) == 1
    assert_support_event(acme.tenant, "key.health_check_requested", support, Outcome.SUCCESS)


def test_the_health_check_task_runs_for_one_tenant(acme: TenantUsers) -> None:
    from keys.tasks import check_tenant_key_health

    # A vendor-managed tenant has no key of its own to check.
    assert check_tenant_key_health(str(acme.tenant.pk)) == "skipped"
    assert check_tenant_key_health("00000000-0000-0000-0000-000000000000") == "skipped"


def test_health_check_refused_without_a_customer_key(
    acme: TenantUsers, support, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = login(support).post(url("health_check"), follow=True)
    assert "there is no customer key to check" in response.content.decode()
    assert enqueued(callbacks) == []
    assert_support_event(acme.tenant, "key.health_check_requested", support, Outcome.FAILURE)


def failed_move(tenant: Tenant) -> ObjectMigration:
    return ObjectMigration.objects.create(
        tenant=tenant,
        direction=Direction.TO_DEDICATED,
        state=MigrationState.FAILED,
        source_location=Location.SHARED,
        target_location=Location.DEDICATED,
        target_dek=DataKey.objects.get(tenant=tenant, version=1),
        error="verification failed: 1 object differs",
    )


def test_retry_a_failed_move(acme: TenantUsers, support) -> None:
    failed = failed_move(acme.tenant)
    set_state(acme.tenant, ServiceState.MIGRATING)
    # The new run is enqueued after commit, which a test's transaction never reaches.
    response = login(support).post(url("retry_move"), follow=True)
    assert "starts again" in response.content.decode()
    newer = ObjectMigration.objects.filter(tenant=acme.tenant).exclude(pk=failed.pk).get()
    assert newer.state != MigrationState.FAILED
    event = assert_support_event(acme.tenant, "objects.migration_retry", support, Outcome.SUCCESS)
    assert event.details["failed"] == str(failed.pk)


def test_retry_refused_when_no_move_failed(acme: TenantUsers, support) -> None:
    response = login(support).post(url("retry_move"), follow=True)
    assert "no failed move" in response.content.decode()
    assert not ObjectMigration.objects.filter(tenant=acme.tenant).exists()
    assert_support_event(acme.tenant, "objects.migration_retry", support, Outcome.FAILURE)


def test_remind_key_admins_of_a_pending_rotation(
    acme: TenantUsers, support, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    set_state(acme.tenant, ServiceState.ROTATION_PENDING)
    with django_capture_on_commit_callbacks(execute=True):
        response = login(support).post(url("remind_rotation"), follow=True)
    assert "Reminder emailed to 2" in response.content.decode()
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert sorted(mail.to) == sorted([acme.owner.email, acme.key_admin.email])
    assert "rotation is waiting" in mail.subject
    assert_support_event(acme.tenant, "key.rotation_reminder", support, Outcome.SUCCESS)


def test_reminder_refused_without_a_pending_rotation(
    acme: TenantUsers, support, mailoutbox, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = login(support).post(url("remind_rotation"), follow=True)
    assert "no key rotation waiting" in response.content.decode()
    assert mailoutbox == []
    assert_support_event(acme.tenant, "key.rotation_reminder", support, Outcome.FAILURE)


def test_turn_the_addon_off_then_on(acme: TenantUsers, support) -> None:
    client = login(support)
    client.post(url("addon_disable"))
    acme.tenant.refresh_from_db()
    assert acme.tenant.byok_addon is False
    assert_support_event(acme.tenant, "addon.disable", support, Outcome.SUCCESS)
    client.post(url("addon_enable"))
    acme.tenant.refresh_from_db()
    assert acme.tenant.byok_addon is True
    assert_support_event(acme.tenant, "addon.enable", support, Outcome.SUCCESS)


@pytest.mark.parametrize(
    "state", [ServiceState.BYOK_ACTIVE, ServiceState.REVOKED, ServiceState.MIGRATING]
)
def test_addon_off_refused_while_the_tenants_own_key_is_in_use(
    acme: TenantUsers, support, state
) -> None:
    set_state(acme.tenant, state)
    response = login(support).post(url("addon_disable"), follow=True)
    assert "remove BYOK first" in response.content.decode()
    acme.tenant.refresh_from_db()
    assert acme.tenant.byok_addon is True
    event = assert_support_event(acme.tenant, "addon.disable", support, Outcome.FAILURE)
    assert "remove BYOK first" in event.reason


def test_addon_on_refused_when_on_already(acme: TenantUsers, support) -> None:
    response = login(support).post(url("addon_enable"), follow=True)
    assert "has the BYOK add-on already" in response.content.decode()
    assert_support_event(acme.tenant, "addon.enable", support, Outcome.FAILURE)


@pytest.mark.parametrize("action", ACTIONS)
def test_non_staff_get_404_and_change_nothing(acme: TenantUsers, client, action) -> None:
    set_state(acme.tenant, ServiceState.ROTATION_PENDING)
    before = AuditEvent.objects.count()
    for who in (client, login(acme.owner, sudo=True), login(acme.key_admin, sudo=True)):
        assert who.post(url(action)).status_code == 404
    acme.tenant.refresh_from_db()
    assert acme.tenant.byok_addon is True
    # Signing the members in is recorded; nothing else is.
    assert not AuditEvent.objects.filter(
        action__in=["addon.disable", "addon.enable", "key.rotation_reminder"]
    ).exists()
    assert AuditEvent.objects.exclude(action__startswith="auth.").count() == before


@pytest.mark.parametrize("action", ACTIONS)
def test_actions_take_post_only(acme: TenantUsers, support, action) -> None:
    assert login(support).get(url(action)).status_code == 405


def test_actions_need_the_csrf_token(acme: TenantUsers, support) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(support)
    assert client.post(url("addon_disable")).status_code == 403
    acme.tenant.refresh_from_db()
    assert acme.tenant.byok_addon is True


def test_unknown_tenant_is_404_for_support(support) -> None:
    assert login(support).post(url("addon_enable", "nobody")).status_code == 404


def test_the_customer_sees_support_actions_on_their_audit_page(acme: TenantUsers, support) -> None:
    login(support).post(url("addon_disable"))
    page = login(acme.owner).get(reverse("audit:list", args=["acme"])).content.decode()
    assert "addon.disable" in page
    assert support.get_username() in page
    assert "Vendor support" in page
