"""The BYOK add-on: services, new tenants, and the data migration's function."""

from __future__ import annotations

import pytest
from django.apps import apps

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import KeySource, SourceKind, SourceState
from tenants.addon import grant_addon_to_own_key_tenants
from tenants.models import ServiceState, Tenant
from tenants.services import (
    AddonRefused,
    tenant_addon_disable,
    tenant_addon_enable,
    tenant_create,
)

SYSTEM = Actor.system("tests")


def test_new_tenants_follow_the_operators_default(db, settings) -> None:
    settings.KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS = False
    assert tenant_create(name="A", slug="a", actor=SYSTEM).byok_addon is False
    assert tenant_create(name="B", slug="b", actor=SYSTEM, byok_addon=True).byok_addon is True
    settings.KEYWARD_BYOK_ADDON_FOR_NEW_TENANTS = True
    assert tenant_create(name="C", slug="c", actor=SYSTEM).byok_addon is True
    event = AuditEvent.objects.get(action="tenant.create", target="a")
    assert event.details == {"byok_addon": False}


def test_enable_and_disable_are_audited(db) -> None:
    tenant = tenant_create(name="A", slug="a", actor=SYSTEM, byok_addon=False)
    tenant = tenant_addon_enable(tenant=tenant, actor=SYSTEM)
    assert Tenant.objects.get(pk=tenant.pk).byok_addon is True
    tenant = tenant_addon_disable(tenant=tenant, actor=SYSTEM)
    assert Tenant.objects.get(pk=tenant.pk).byok_addon is False
    assert list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="addon.")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["addon.enable", "addon.disable"]


@pytest.mark.parametrize("state", [s for s in ServiceState if s != ServiceState.VENDOR_MANAGED])
def test_disable_refused_unless_vendor_managed(db, state) -> None:
    tenant = tenant_create(name="A", slug="a", actor=SYSTEM, byok_addon=True)
    Tenant.objects.filter(pk=tenant.pk).update(state=state)
    before = AuditEvent.objects.count()
    with pytest.raises(AddonRefused, match="remove BYOK first"):
        tenant_addon_disable(tenant=tenant, actor=SYSTEM)
    assert Tenant.objects.get(pk=tenant.pk).byok_addon is True
    assert AuditEvent.objects.count() == before


def test_the_migration_grants_the_addon_to_tenants_with_their_own_key(db) -> None:
    def make(slug: str, **fields: object) -> Tenant:
        tenant = tenant_create(name=slug, slug=slug, actor=SYSTEM, byok_addon=False)
        Tenant.objects.filter(pk=tenant.pk).update(**fields)
        return tenant

    plain = make("plain")
    active = make("active", state=ServiceState.BYOK_ACTIVE)
    revoked = make("revoked", state=ServiceState.REVOKED)
    draft = make("draft")
    KeySource.objects.create(tenant=draft, kind=SourceKind.KMIP, state=SourceState.DRAFT)
    retired = make("retired")
    KeySource.objects.create(tenant=retired, kind=SourceKind.AWS_KMS, state=SourceState.RETIRED)
    # The migration calls it with the historical models; today's have the same fields.
    tenant_model = apps.get_model("tenants", "Tenant")
    source_model = apps.get_model("keys", "KeySource")
    assert grant_addon_to_own_key_tenants(tenant_model, source_model) == 3
    has = dict(Tenant.objects.values_list("slug", "byok_addon"))
    assert has == {
        "plain": False,
        "active": True,
        "revoked": True,
        "draft": True,
        "retired": False,  # stopped using its key: back to vendor-managed, no add-on needed
    }
    assert {active.slug, revoked.slug, draft.slug} == {s for s, on in has.items() if on}
    assert plain.slug not in {s for s, on in has.items() if on}
    # Running it again changes nothing.
    assert grant_addon_to_own_key_tenants(tenant_model, source_model) == 0
