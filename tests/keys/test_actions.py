"""The lifecycle actions (keys/views/actions.py): one click is one audit event, and
it names the person who clicked, with their role.

Every row of `ACTIONS` needs a way to succeed and a way to be refused below; a
row added without them fails here, so a new action is covered from the start.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent, Outcome
from audit.services import Actor
from keys.models import KeySource, SourceKind
from keys.services.lifecycle import tenant_revoke, tenant_schedule_destroy
from keys.views.actions import ACTIONS, LifecycleAction
from tenants.models import Role, ServiceState, Tenant
from tenants.permissions import Perm
from tests.conftest import login
from tests.keys.conftest import CUSTOMER_ACCOUNT
from tests.keys.test_lifecycle import move_alias
from tests.support.aws import create_kms_key


@dataclass
class Click:
    """What the person posts (and which source the URL names, for a switch)."""

    data: dict[str, str] = field(default_factory=dict)
    source: KeySource | None = None


# A scenario brings the tenant (`byok`: AWS KMS through an alias, in normal use)
# to where the click succeeds or is refused, and says what is posted.
Scenario = Callable[[dict[str, Any], Any], Click]


def _revoked(byok: dict[str, Any]) -> None:
    acme = byok["acme"]
    tenant_revoke(tenant=acme.tenant, actor=Actor.for_user(acme.owner), confirm="acme")


def _key_store_unreachable(settings: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{closed}"


def _tested_new_key(byok: dict[str, Any], settings: Any) -> Click:
    client = login(byok["acme"].owner, sudo=True)
    new_key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    client.post(reverse("keys:aws_save_and_test", args=["acme"]), {"key_arn": new_key})
    tenant = byok["acme"].tenant
    return Click(
        source=KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS, state="tested")
    )


def _in_use_source(byok: dict[str, Any]) -> KeySource:
    return KeySource.objects.get(
        tenant=byok["acme"].tenant, kind=SourceKind.AWS_KMS, state="active"
    )


def _then(*steps: Callable[[], Any], click: Click | None = None) -> Click:
    for step in steps:
        step()
    return click or Click()


SUCCEEDS: dict[str, Scenario] = {
    "rotation_confirm": lambda byok, s: _then(lambda: move_alias(byok)),
    "rotation_reject": lambda byok, s: _then(lambda: move_alias(byok)),
    "revoke": lambda byok, s: Click({"confirm": "acme"}),
    "restore": lambda byok, s: _then(lambda: _revoked(byok)),
    "destroy": lambda byok, s: _then(lambda: _revoked(byok), click=Click({"confirm": "acme"})),
    "cancel_destroy": lambda byok, s: _then(
        lambda: _revoked(byok),
        lambda: tenant_schedule_destroy(
            tenant=byok["acme"].tenant, actor=Actor.system("tests"), confirm="acme"
        ),
    ),
    "remove_byok": lambda byok, s: Click(),
    "rotate_kek": lambda byok, s: Click(),
    "switch_source": _tested_new_key,
}

REFUSED: dict[str, Scenario] = {
    # The new version's checks fail: the key store does not answer.
    "rotation_confirm": lambda byok, s: _then(
        lambda: move_alias(byok), lambda: _key_store_unreachable(s)
    ),
    "rotation_reject": lambda byok, s: Click(),  # no rotation waits
    "revoke": lambda byok, s: Click({"confirm": "Acme"}),  # the name, not the identifier
    # The key's checks fail: the customer has not enabled it again.
    "restore": lambda byok, s: _then(
        lambda: _revoked(byok), lambda: byok["kms"].disable_key(KeyId=byok["key_arn"])
    ),
    "destroy": lambda byok, s: _then(lambda: _revoked(byok), click=Click({"confirm": "Acme"})),
    "cancel_destroy": lambda byok, s: _then(lambda: _revoked(byok)),  # nothing scheduled
    "remove_byok": lambda byok, s: _then(lambda: _revoked(byok)),
    "rotate_kek": lambda byok, s: _then(lambda: _key_store_unreachable(s)),
    "switch_source": lambda byok, s: _then(
        lambda: _revoked(byok), click=Click(source=_in_use_source(byok))
    ),
}

NAMES = [action.name for action in ACTIONS]


def _clicker(byok: dict[str, Any], action: LifecycleAction) -> tuple[Any, str]:
    """The person with the least role that may click: a key administrator, or the owner."""
    role = Role.KEY_ADMIN if action.perm == Perm.MANAGE_KEYS else Role.OWNER
    return getattr(byok["acme"], str(role)), str(role.label)


def _click(byok: dict[str, Any], action: LifecycleAction, click: Click) -> AuditEvent:
    """Post the action once; the one event it wrote."""
    user, role = _clicker(byok, action)
    client = login(user, sudo=True)
    tenant = byok["acme"].tenant
    before = max(AuditEvent.objects.filter(tenant=tenant).values_list("seq", flat=True))
    args: list[Any] = ["acme"] + ([click.source.pk] if click.source is not None else [])
    response = client.post(reverse(f"keys:{action.name}", args=args), click.data)
    assert response.status_code == 302
    new = list(AuditEvent.objects.filter(tenant=tenant, seq__gt=before).order_by("seq"))
    assert len(new) == 1, [(e.action, e.outcome, e.actor_display, e.reason) for e in new]
    event = new[0]
    assert (event.actor_kind, event.actor_id, event.actor_display) == (
        "user",
        str(user.pk),
        f"{user.get_username()} ({role})",
    )
    assert event.action == action.audit
    return event


def test_every_action_has_its_scenarios() -> None:
    assert set(SUCCEEDS) == set(NAMES), "say here how each action succeeds"
    assert set(REFUSED) == set(NAMES), "say here how each action is refused"


@pytest.mark.parametrize("name", NAMES)
def test_a_successful_click_is_one_event_naming_the_person(byok, settings, name) -> None:
    action = next(a for a in ACTIONS if a.name == name)
    click = SUCCEEDS[name](byok, settings)
    event = _click(byok, action, click)
    assert event.outcome != Outcome.FAILURE


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_click_is_one_event_naming_the_person(byok, settings, name) -> None:
    action = next(a for a in ACTIONS if a.name == name)
    click = REFUSED[name](byok, settings)
    state = Tenant.objects.get(pk=byok["acme"].tenant.pk).state
    event = _click(byok, action, click)
    assert event.outcome == Outcome.FAILURE
    assert event.reason
    assert Tenant.objects.get(pk=byok["acme"].tenant.pk).state == state


def test_a_restore_records_the_checks_it_ran(byok) -> None:
    acme = byok["acme"]
    restore = next(a for a in ACTIONS if a.name == "restore")
    _revoked(byok)
    byok["kms"].disable_key(KeyId=byok["key_arn"])
    failed = _click(byok, restore, Click())
    assert failed.details["checks"]["Key enabled"] is False
    byok["kms"].enable_key(KeyId=byok["key_arn"])
    restored = _click(byok, restore, Click())
    assert restored.details["to"] == ServiceState.BYOK_ACTIVE
    assert restored.details["checks"] and all(restored.details["checks"].values())
    assert restored.reason == (
        f"restored by {acme.key_admin.get_username()} (Key administrator); checks passed"
    )


def test_a_second_click_that_changes_nothing_is_still_one_event(byok) -> None:
    confirm = next(a for a in ACTIONS if a.name == "rotation_confirm")
    move_alias(byok)
    assert _click(byok, confirm, Click()).details["to"] == ServiceState.REWRAPPING
    again = _click(byok, confirm, Click())
    # The state table no longer offers a confirm while rewrapping: refused, once.
    assert again.outcome == Outcome.FAILURE
    assert "is not available while the tenant's state is" in again.reason
