"""Every key-changing endpoint: wrong role, other tenant, wrong method, missing sudo.

Each refusal changes nothing: no audit event, no state change, no key row.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from keys.models import DataKey, KeyImport, KeySource
from tests.conftest import login

# (URL name, needs a source id, owner only, sudo required)
ENDPOINTS = [
    ("keys:rotate_dek", False, False, True),
    ("keys:set_cache_ttl", False, False, True),
    ("records:reencrypt", False, False, True),
    ("keys:aws_save_and_test", False, False, True),
    ("keys:azure_save_and_test", False, False, True),
    ("keys:kmip_save_and_test", False, False, True),
    ("keys:test_source", True, False, True),
    ("keys:enable_source", True, False, True),
    ("keys:switch_source", True, False, True),
    ("keys:import_parameters", False, False, False),
    ("keys:upload_key", False, False, True),
    ("keys:rotation_confirm", False, False, True),
    ("keys:rotation_reject", False, False, True),
    ("keys:revoke", False, False, True),
    ("keys:restore", False, False, True),
    ("keys:destroy", False, True, True),
    ("keys:cancel_destroy", False, True, True),
    ("keys:remove_byok", False, True, True),
    ("keys:rotate_kek", False, False, True),
    ("objects:migration_retry", False, False, True),
]


def url(name: str, slug: str, with_source: bool, tenant: Any) -> str:
    if with_source:
        source = KeySource.objects.filter(tenant=tenant).first()
        assert source is not None
        return reverse(name, args=[slug, source.pk])
    return reverse(name, args=[slug])


def snapshot(tenant: Any) -> tuple[Any, ...]:
    tenant.refresh_from_db()
    return (
        AuditEvent.objects.exclude(action__in=["auth.login", "auth.sudo"]).count(),
        tenant.state,
        tenant.destroy_after,
        DataKey.objects.count(),
        KeySource.objects.count(),
        KeyImport.objects.count(),
    )


@pytest.mark.parametrize(("name", "with_source", "owner_only", "sudo"), ENDPOINTS)
def test_refusals_change_nothing(acme, globex, name, with_source, owner_only, sudo) -> None:
    target = url(name, "acme", with_source, acme.tenant)
    data = {"confirm": "acme", "ttl": "60", "key_arn": "x"}
    roles = ["auditor", "viewer"] + (["key_admin"] if owner_only else [])
    clients = {role: login(getattr(acme, role), sudo=True) for role in roles}
    outsider = login(globex.owner, sudo=True)
    owner = login(acme.owner, sudo=True)
    unsudoed = login(acme.owner)
    before = snapshot(acme.tenant)
    for role, client in clients.items():
        assert client.post(target, data).status_code == 403, role
    assert outsider.post(target, data).status_code == 404
    if with_source:  # acme's source id under globex's own URL: never found
        assert outsider.post(url(name, "globex", True, acme.tenant), data).status_code == 404
    assert owner.get(target).status_code == 405
    if sudo:
        response = unsudoed.post(target, data)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("console:sudo"))
    assert snapshot(acme.tenant) == before
