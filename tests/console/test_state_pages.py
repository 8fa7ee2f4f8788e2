"""Every tenant page in every state for every role, against the declared table
(tenants/display.py): the badge, the banner, the actions offered; and every
action the table forbids in a state is refused by the server with its message."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.urls import reverse
from django.utils.html import escape

from audit.models import AuditEvent
from keys.models import KeySource
from tenants.display import STATE_DISPLAY, Act, state_refusal
from tenants.models import Role, ServiceState, Tenant
from tenants.permissions import ROLE_PERMS, Perm
from tests.conftest import login

ROLES = (Role.OWNER, Role.KEY_ADMIN, Role.AUDITOR, Role.VIEWER)

# The tenant pages some roles may open, and the permission each needs.
PAGES_BEHIND = (
    ("audit:list", Perm.VIEW_AUDIT),
    ("tenants:members", Perm.MANAGE_MEMBERS),
    ("keys:upload", Perm.MANAGE_KEYS),
    ("keys:rotation", Perm.MANAGE_KEYS),
    ("keys:aws", Perm.MANAGE_KEYS),
)

# What each action looks like on a page: (page URL name, the mark of the offer).
OFFERS: dict[Act, tuple[str, str]] = {
    Act.ENABLE: ("keys:overview", 'data-testid="bring-aws"'),
    Act.CONFIRM_ROTATION: ("keys:overview", 'data-testid="review-rotation"'),
    Act.REVOKE: ("keys:overview", 'data-testid="revoke"'),
    Act.RESTORE: ("keys:overview", 'data-testid="restore"'),
    Act.DESTROY: ("keys:overview", 'data-testid="destroy"'),
    Act.REMOVE_BYOK: ("keys:overview", 'data-testid="remove-byok"'),
    Act.ROTATE_DEK: ("keys:overview", 'data-testid="rotate-dek"'),
    Act.REENCRYPT: ("keys:overview", 'data-testid="reencrypt"'),
    Act.SET_CACHE_TTL: ("keys:overview", "/keys/cache-ttl/"),
    Act.ROTATE_LOOKUP_KEY: ("data:overview", 'data-testid="rotate-lookup-key"'),
}
# The permission each offer needs besides the state.
NEEDS = {
    Act.DESTROY: Perm.DESTROY_KEYS,
    Act.REMOVE_BYOK: Perm.REMOVE_BYOK,
    Act.ROTATE_LOOKUP_KEY: Perm.MANAGE_API_TOKENS,
}

SOURCE = "the tenant's own key source"  # replaced by its id in the test

# Where the server is asked to do each action: URL name and its extra arguments.
ENDPOINTS: dict[Act, list[tuple[str, tuple[Any, ...]]]] = {
    Act.BRING_KEY: [
        ("keys:aws_save_and_test", ()),
        ("keys:azure_save_and_test", ()),
        ("keys:kmip_save_and_test", ()),
        ("keys:test_source", (uuid.uuid4(),)),
    ],
    Act.ENABLE: [("keys:enable_source", (uuid.uuid4(),))],
    Act.UPLOAD_VERSION: [("keys:import_parameters", ()), ("keys:upload_key", ())],
    Act.CONFIRM_ROTATION: [("keys:rotation_confirm", ()), ("keys:rotation_reject", ())],
    Act.ROTATE_KEK: [("keys:rotate_kek", ())],
    Act.SWITCH_SOURCE: [("keys:switch_source", (SOURCE,))],
    Act.REVOKE: [("keys:revoke", ())],
    Act.RESTORE: [("keys:restore", ())],
    Act.DESTROY: [("keys:destroy", ()), ("keys:cancel_destroy", ())],
    Act.REMOVE_BYOK: [("keys:remove_byok", ())],
    Act.ROTATE_DEK: [("keys:rotate_dek", ())],
    Act.REENCRYPT: [("records:reencrypt", ())],
    Act.ROTATE_LOOKUP_KEY: [("data:lookup_key_rotate", ())],
    Act.SET_CACHE_TTL: [("keys:set_cache_ttl", ())],
    Act.RETRY_MOVE: [("objects:migration_retry", ())],
}


def test_the_table_covers_every_state_and_every_action_has_an_endpoint() -> None:
    assert set(STATE_DISPLAY) == set(ServiceState.values)
    assert set(ENDPOINTS) == set(Act)


def _in_state(tenant: Tenant, state: str) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(state=state)
    tenant.refresh_from_db()


@pytest.mark.parametrize("state", ServiceState.values)
def test_every_page_shows_what_the_table_says_for_every_role(acme, state) -> None:
    _in_state(acme.tenant, state)
    row = STATE_DISPLAY[state]
    for role in ROLES:
        user = getattr(acme, str(role))
        client = login(user)
        names = ["console:dashboard", "keys:overview", "data:overview"]
        names += [name for name, perm in PAGES_BEHIND if perm in ROLE_PERMS[role]]
        pages = {name: client.get(reverse(name, args=["acme"])) for name in names}
        for name, page in pages.items():
            assert page.status_code == 200, (name, role)
            body = page.content.decode()
            assert 'action=""' not in body, (name, role)  # no form that posts to itself
            if row.banner is None:
                assert 'data-testid="state-banner"' not in body, (name, role)
            else:
                assert f"<strong>{row.banner.title}.</strong>" in body, (name, role)
                link = row.banner.link
                shown = (
                    link is not None
                    and link.act in row.allows
                    and Perm.MANAGE_KEYS in ROLE_PERMS[role]
                )
                assert ('data-testid="banner-link"' in body) == shown, (name, role)
        badge = f'data-testid="tenant-state">{row.badge}</span>'
        assert badge in pages["console:dashboard"].content.decode()
        assert f'data-testid="state-badge">{row.badge}<' in pages["keys:overview"].content.decode()
        for act, (page_name, mark) in OFFERS.items():
            expected = act in row.allows and NEEDS.get(act, Perm.MANAGE_KEYS) in ROLE_PERMS[role]
            body = pages[page_name].content.decode()
            assert (mark in body) == expected, (state, role, act)


@pytest.mark.parametrize("state", ServiceState.values)
def test_every_action_the_table_forbids_is_refused_with_its_message(acme, state) -> None:
    _in_state(acme.tenant, state)
    client = login(acme.owner, sudo=True)
    refused = [act for act in Act if act not in STATE_DISPLAY[state].allows]
    for act in refused:
        message = state_refusal(acme.tenant, act)
        assert message is not None
        for url_name, placeholders in ENDPOINTS[act]:
            source = KeySource.objects.filter(tenant=acme.tenant).first()
            assert source is not None
            extra = [source.pk if arg == SOURCE else arg for arg in placeholders]
            before = AuditEvent.objects.filter(tenant=acme.tenant).count()
            response = client.post(reverse(url_name, args=["acme", *extra]), follow=True)
            body = response.content.decode()
            assert escape(message) in body, (state, act, url_name)
            acme.tenant.refresh_from_db()
            assert acme.tenant.state == state, (act, url_name)
            failures = AuditEvent.objects.filter(tenant=acme.tenant).order_by("-seq")
            assert failures.count() == before + 1, (act, url_name)  # one refusal, one event
            latest = failures.first()
            assert latest is not None and latest.outcome == "failure"


@pytest.mark.parametrize("cause", ["upload", "store_version", "alias", "material", "on_request"])
def test_banner_and_review_page_say_where_a_rotation_came_from(acme, cause) -> None:
    from keys.selectors.overview import ROTATION_CAUSES
    from keys.services.health import tenant_mark_rotation_pending

    _in_state(acme.tenant, ServiceState.BYOK_ACTIVE)
    source = KeySource.objects.get(tenant=acme.tenant)
    assert tenant_mark_rotation_pending(acme.tenant, source, "root-9", cause=cause)
    client = login(acme.key_admin)
    sentence = escape(ROTATION_CAUSES[cause])
    for name in ("console:dashboard", "keys:rotation"):
        body = client.get(reverse(name, args=["acme"])).content.decode()
        assert sentence in body, name
