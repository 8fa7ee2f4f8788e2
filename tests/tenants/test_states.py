"""The tenant state machine (tenants/states.py): every move, allowed and refused."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.db import transaction

from audit.models import AuditEvent
from audit.services import Actor
from tenants import states
from tenants.models import ServiceState, Tenant
from tenants.states import TRANSITIONS, By, TransitionNotAllowed, tenant_transition

ACTORS = {
    By.PERSON: Actor("user", "42", "key.admin@acme.example"),
    By.SUPPORT: Actor("support", "7", "support@vendor.example"),
    By.SYSTEM: Actor.system("key health check"),
}
ALLOWED = {(t.source, t.target): t for t in TRANSITIONS}


def _tenant_in(state: str) -> Tenant:
    tenant = Tenant.objects.create(name=f"T {state}", slug=f"t-{state.replace('_', '-')}")
    Tenant.objects.filter(pk=tenant.pk).update(state=state)
    tenant.refresh_from_db()
    return tenant


@pytest.mark.django_db
@pytest.mark.parametrize("move", TRANSITIONS, ids=lambda t: f"{t.source}->{t.target}")
def test_every_allowed_transition_moves_bumps_and_records_the_real_actor(move: Any) -> None:
    tenant = _tenant_in(move.source)
    seen: list[tuple[str, str]] = []
    states.on_transition(lambda t, m: seen.append((str(t.pk), m.target)))
    try:
        for by in move.by:
            Tenant.objects.filter(pk=tenant.pk).update(state=move.source)
            before = Tenant.objects.get(pk=tenant.pk)
            moved = tenant_transition(
                tenant=tenant, to=move.target, actor=ACTORS[by], action="test.move"
            )
            assert moved is not None and moved.state == move.target
            assert moved.state_changed_at >= before.state_changed_at
            assert moved.key_epoch == before.key_epoch + (1 if move.bump_epoch else 0)
            event = (
                AuditEvent.objects.filter(tenant=tenant, action="test.move")
                .order_by("-seq")
                .first()
            )
            assert event is not None
            assert event.actor_display == ACTORS[by].display
            assert event.details["from"] == move.source and event.details["to"] == move.target
            assert (str(tenant.pk), move.target) in seen
    finally:
        states._listeners.pop()


@pytest.mark.django_db
@pytest.mark.parametrize("move", TRANSITIONS, ids=lambda t: f"{t.source}->{t.target}")
def test_an_actor_the_table_does_not_name_is_refused_and_nothing_changes(move: Any) -> None:
    tenant = _tenant_in(move.source)
    for by in set(By) - set(move.by):
        with pytest.raises(TransitionNotAllowed), transaction.atomic():
            tenant_transition(tenant=tenant, to=move.target, actor=ACTORS[by], action="test.move")
        after = Tenant.objects.get(pk=tenant.pk)
        assert after.state == move.source and after.key_epoch == tenant.key_epoch
    assert not AuditEvent.objects.filter(tenant=tenant, action="test.move").exists()


REFUSED = [
    (a, b)
    for a, b in itertools.product(ServiceState.values, ServiceState.values)
    if (a, b) not in ALLOWED
]


@pytest.mark.django_db
@pytest.mark.parametrize(("source", "target"), REFUSED, ids=lambda s: str(s))
def test_every_move_not_in_the_table_changes_nothing(source: str, target: str) -> None:
    tenant = _tenant_in(source)
    for actor in ACTORS.values():
        assert tenant_transition(tenant=tenant, to=target, actor=actor, action="test.move") is None
    after = Tenant.objects.get(pk=tenant.pk)
    assert after.state == source and after.key_epoch == tenant.key_epoch
    assert after.state_changed_at == tenant.state_changed_at
    assert not AuditEvent.objects.filter(tenant=tenant, action="test.move").exists()


@pytest.mark.django_db
def test_only_from_narrows_the_table() -> None:
    tenant = _tenant_in(ServiceState.BYOK_ACTIVE)
    assert (
        tenant_transition(
            tenant=tenant,
            to=ServiceState.REVOKED,
            actor=ACTORS[By.PERSON],
            action="test.move",
            only_from=(ServiceState.DEGRADED,),
        )
        is None
    )
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.BYOK_ACTIVE


def test_the_table_reaches_every_state_and_names_each_move_once() -> None:
    assert len(ALLOWED) == len(TRANSITIONS)
    reached = {t.target for t in TRANSITIONS} | {ServiceState.VENDOR_MANAGED}
    assert reached == set(ServiceState.values)
    assert all(t.by for t in TRANSITIONS)
    assert states.REVOCABLE_STATES == (
        ServiceState.BYOK_ACTIVE,
        ServiceState.DEGRADED,
        ServiceState.ROTATION_PENDING,
        ServiceState.REWRAPPING,
    )
