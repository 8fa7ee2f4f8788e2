"""Every state change is recorded once, with the actor who caused it (tenants/states.py)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from audit.models import AuditEvent
from keys.tasks import check_key_health
from tenants.models import ServiceState, Tenant
from tests.conftest import login


def _moves(tenant: Tenant) -> list[tuple[str, str, str, str]]:
    """(action, actor kind, actor, to) of every recorded state change, oldest first."""
    return [
        (e.action, e.actor_kind, e.actor_display, e.details["to"])
        for e in AuditEvent.objects.filter(tenant=tenant).order_by("seq")
        if isinstance(e.details, dict) and "to" in e.details and "from" in e.details
    ]


def test_a_key_admins_revoke_and_restore_name_the_person(
    byok: Any, django_capture_on_commit_callbacks: Any
) -> None:
    acme = byok["acme"]
    tenant = acme.tenant
    client = login(acme.key_admin, sudo=True)
    before = len(_moves(tenant))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("keys:revoke", args=["acme"]), {"confirm": "acme"})
        client.post(reverse("keys:restore", args=["acme"]))
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.BYOK_ACTIVE
    who = f"{acme.key_admin.get_username()} (Key administrator)"
    assert _moves(tenant)[before:] == [
        ("key.revoke", "user", who, ServiceState.REVOKED),
        ("key.restore", "user", who, ServiceState.BYOK_ACTIVE),
    ]


def test_the_health_checks_revoke_names_the_system(byok: Any) -> None:
    tenant = byok["acme"].tenant
    byok["kms"].disable_key(KeyId=byok["key_arn"])
    check_key_health()
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.REVOKED
    action, kind, actor, to = _moves(tenant)[-1]
    assert (action, kind, actor, to) == (
        "key.revoked",
        "system",
        "key health check",
        ServiceState.REVOKED,
    )


def test_enable_names_the_person_and_its_end_the_system(byok: Any) -> None:
    moves = _moves(byok["acme"].tenant)
    enable = [m for m in moves if m[0] in ("byok.enable", "byok.enabled")]
    assert [(a, k, to) for a, k, _, to in enable] == [
        ("byok.enable", "user", ServiceState.MIGRATING),
        ("byok.enabled", "system", ServiceState.BYOK_ACTIVE),
    ]
