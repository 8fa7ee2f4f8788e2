"""The Django admin cannot go around the services, the state machine or the waiting period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import AnonymousUser
from django.core import mail
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, KeySource
from keys.services.deks import dek_rotate
from tenants.models import Invitation, ServiceState, Tenant
from tests.conftest import login, make_user

# What a superuser may do with each registered model: (add, change, delete).
# A model registered without a line here fails the test: declare it on purpose.
DECLARED: dict[str, tuple[bool, bool, bool]] = {
    "auth.Group": (True, True, True),
    "auth.User": (True, True, True),
    # Sign-in lockouts: an operator may lift one (change or delete), never invent one.
    "axes.AccessAttempt": (False, True, True),
    "axes.AccessLog": (False, True, True),
    "axes.AccessFailureLog": (False, True, True),
    # Added through tenant_onboard, changed through its services; never deleted
    # (destroyed by crypto-shredding, its audit trail outlives it).
    "tenants.Tenant": (True, True, False),
    # Through membership_add / change_role / remove, each audited.
    "tenants.Membership": (True, True, True),
    # Sent and revoked from the Members page, where it is audited.
    "tenants.Invitation": (False, False, False),
    # Asked for on the support pages, answered by the tenant: a history here.
    "tenants.AccessRequest": (False, False, False),
    "audit.AuditEvent": (False, False, False),
    "keys.KeySource": (False, False, False),
    "keys.KekVersion": (False, False, False),
    "keys.DataKey": (False, False, False),
    "archive.ReencryptionJob": (False, False, False),
}


@pytest.fixture
def superuser(db: None) -> Any:
    return make_user("root@vendor.test", is_staff=True, is_superuser=True)


def _request(user: Any) -> Any:
    request = RequestFactory().get("/admin/")
    request.user = user or AnonymousUser()
    return request


def test_every_registered_model_is_declared_with_its_permissions(superuser) -> None:
    request = _request(superuser)
    actual = {
        model._meta.label: (
            model_admin.has_add_permission(request),
            model_admin.has_change_permission(request),
            model_admin.has_delete_permission(request),
        )
        for model, model_admin in admin.site._registry.items()
    }
    assert actual == DECLARED


def test_no_key_or_audit_row_can_be_changed_even_given_one(superuser, acme) -> None:
    request = _request(superuser)
    rows = {
        KeySource: KeySource.objects.filter(tenant=acme.tenant).first(),
        DataKey: DataKey.objects.filter(tenant=acme.tenant).first(),
        AuditEvent: AuditEvent.objects.filter(tenant=acme.tenant).first(),
        Tenant: acme.tenant,
    }
    for model, row in rows.items():
        model_admin = admin.site._registry[model]
        assert row is not None
        assert not model_admin.has_delete_permission(request, row)
        if model is not Tenant:
            assert not model_admin.has_change_permission(request, row)


def change_url(tenant: Tenant) -> str:
    return reverse("admin:tenants_tenant_change", args=[tenant.pk])


def change_form(tenant: Tenant, **values: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": tenant.name,
        "dek_cache_ttl": tenant.dek_cache_ttl,
        "dek_rotation_days": tenant.dek_rotation_days,
        # The read-only memberships inline posts its (empty) management form.
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "0",
    }
    data.update(values)
    return data


GOVERNED = {
    "state": ServiceState.VENDOR_MANAGED,
    "key_epoch": 99,
    "destroy_after": "2020-01-01 00:00:00",
    "state_changed_at": "2020-01-01 00:00:00",
    "slug": "hijacked",
    # The add-on is support's, on the support console: "" is an unticked checkbox.
    "byok_addon": "",
}


def _snapshot(tenant: Tenant) -> dict[str, Any]:
    fresh = Tenant.objects.get(pk=tenant.pk)
    fields = ("state", "key_epoch", "destroy_after", "slug", "byok_addon")
    return {f: getattr(fresh, f) for f in fields} | {"state_changed_at": fresh.state_changed_at}


def test_a_superuser_cannot_change_a_governed_field(superuser, acme) -> None:
    # A revoked tenant whose owner scheduled destruction: the waiting period runs.
    destroy_after = timezone.now() + timedelta(days=7)
    Tenant.objects.filter(pk=acme.tenant.pk).update(
        state=ServiceState.REVOKED, key_epoch=3, destroy_after=destroy_after
    )
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    client = login(superuser)
    before, events = _snapshot(tenant), AuditEvent.objects.count()
    page = client.get(change_url(tenant)).content.decode()
    for field in GOVERNED:
        assert f'name="{field}"' not in page
    response = client.post(change_url(tenant), change_form(tenant, **GOVERNED))
    assert response.status_code == 302
    assert _snapshot(tenant) == before
    assert AuditEvent.objects.count() == events  # nothing changed, nothing recorded


def test_allowed_fields_go_through_their_services(superuser, acme) -> None:
    tenant = acme.tenant
    epoch = tenant.key_epoch
    client = login(superuser)
    data = change_form(tenant, name="Acme Corp", dek_cache_ttl=60, dek_rotation_days=30, **GOVERNED)
    response = client.post(change_url(tenant), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert (tenant.name, tenant.dek_cache_ttl, tenant.dek_rotation_days) == ("Acme Corp", 60, 30)
    # A shorter TTL bumps the epoch (through the key service), and nothing else moved.
    assert tenant.key_epoch == epoch + 1
    assert (tenant.state, tenant.slug, tenant.destroy_after) == ("vendor_managed", "acme", None)
    events = {e.action: e for e in AuditEvent.objects.filter(tenant=tenant)}
    assert events["tenant.rename"].details == {"from": "Acme", "to": "Acme Corp"}
    assert events["tenant.set_dek_cache_ttl"].details == {"from": 300, "to": 60}
    assert events["tenant.set_dek_rotation_days"].details == {"from": 7, "to": 30}
    assert events["tenant.rename"].actor_display == superuser.username
    assert "tenant.update" not in events


def test_out_of_range_values_and_state_refusals_are_form_errors(superuser, acme) -> None:
    tenant = acme.tenant
    client = login(superuser)
    response = client.post(change_url(tenant), change_form(tenant, dek_rotation_days=0))
    assert response.status_code == 200
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.DESTROYED)
    tenant.refresh_from_db()
    response = client.post(change_url(tenant), change_form(tenant, dek_cache_ttl=60))
    assert response.status_code == 200
    assert "not available while the tenant" in response.content.decode()
    tenant.refresh_from_db()
    assert (tenant.dek_cache_ttl, tenant.dek_rotation_days) == (300, 7)


def test_add_tenant_onboards_it_completely(superuser, django_capture_on_commit_callbacks) -> None:
    client = login(superuser)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:tenants_tenant_add"),
            {
                "name": "Initech",
                "slug": "initech",
                "owner_email": "peter@initech.example",
                "memberships-TOTAL_FORMS": "0",
                "memberships-INITIAL_FORMS": "0",
            },
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant = Tenant.objects.get(slug="initech")
    assert KeySource.objects.filter(tenant=tenant).exists()
    assert DataKey.objects.filter(tenant=tenant, version=1).exists()
    assert Invitation.objects.get(tenant=tenant).role == "owner"
    assert mail.outbox[-1].to == ["peter@initech.example"]
    create = AuditEvent.objects.get(tenant=tenant, action="tenant.create")
    assert create.actor_display == superuser.username
    # What answered 500 for a bare row: the key pages' rotation works from the start.
    rotated = dek_rotate(tenant=tenant, actor=Actor.system("tests"), reason="test")
    assert rotated.version == 2


def test_add_tenant_refuses_a_taken_slug(superuser, acme) -> None:
    client = login(superuser)
    response = client.post(
        reverse("admin:tenants_tenant_add"),
        {"name": "Other", "slug": "acme", "owner_email": "x@y.example"},
    )
    assert response.status_code == 200
    assert Tenant.objects.filter(slug="acme").count() == 1
    assert not Invitation.objects.exists()


def test_invitations_are_read_only_in_the_admin(superuser, acme) -> None:
    client = login(superuser)
    assert client.get(reverse("admin:tenants_invitation_add")).status_code == 403
