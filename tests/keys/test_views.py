from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils.html import escape

from audit.models import AuditEvent
from keys.models import DataKey
from keys.runtime import reset_for_tests
from records.models import ReencryptionJob
from tenants.display import Act, state_refusal
from tenants.models import ServiceState, Tenant
from tests.conftest import login


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


ACTIONS = [
    ("keys:rotate_dek", {}),
    ("keys:set_cache_ttl", {"ttl": "120"}),
    ("records:reencrypt", {}),
]


@pytest.mark.parametrize(("name", "data"), ACTIONS)
@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_read_only_roles_get_403_and_nothing_changes(acme, role, name, data) -> None:
    client = login(getattr(acme, role), sudo=True)
    before = (DataKey.objects.count(), AuditEvent.objects.count())
    response = client.post(reverse(name, args=["acme"]), data)
    assert response.status_code == 403
    assert (DataKey.objects.count(), AuditEvent.objects.count()) == before


@pytest.mark.parametrize(("name", "data"), ACTIONS)
def test_another_tenant_is_404(acme, globex, name, data) -> None:
    response = login(globex.owner, sudo=True).post(reverse(name, args=["acme"]), data)
    assert response.status_code == 404


@pytest.mark.parametrize(("name", "data"), ACTIONS)
def test_wrong_method_is_405(acme, name, data) -> None:
    assert login(acme.owner, sudo=True).get(reverse(name, args=["acme"])).status_code == 405


@pytest.mark.parametrize(("name", "data"), ACTIONS)
def test_without_recent_password_goes_to_sudo(acme, name, data) -> None:
    response = login(acme.key_admin).post(reverse(name, args=["acme"]), data)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("console:sudo"))
    assert DataKey.objects.filter(tenant=acme.tenant).count() == 1


@pytest.mark.parametrize("role", ["owner", "key_admin"])
def test_rotate_now(acme, role, django_capture_on_commit_callbacks) -> None:
    client = login(getattr(acme, role), sudo=True)
    response = client.post(
        reverse("keys:rotate_dek", args=["acme"]), {"reason": "quarterly drill"}, follow=True
    )
    assert "New data key v2 is in use for new data." in response.content.decode()
    event = AuditEvent.objects.get(tenant=acme.tenant, action="dek.rotate")
    assert event.reason == "quarterly drill"
    role_name = {"owner": "Owner", "key_admin": "Key administrator"}[role]
    assert event.actor_display == f"{getattr(acme, role).username} ({role_name})"


def test_rotate_refused_when_revoked_is_audited_as_failure(acme) -> None:
    Tenant.objects.filter(pk=acme.tenant.pk).update(state=ServiceState.REVOKED)
    response = login(acme.owner, sudo=True).post(
        reverse("keys:rotate_dek", args=["acme"]), follow=True
    )
    assert escape(state_refusal(Tenant.objects.get(pk=acme.tenant.pk), Act.ROTATE_DEK) or "") in (
        response.content.decode()
    )
    event = AuditEvent.objects.get(tenant=acme.tenant, action="dek.rotate")
    assert event.outcome == "failure"
    assert DataKey.objects.filter(tenant=acme.tenant).count() == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "Choose at least 10 seconds."),
        ("90000", "Choose at most 86400 seconds (24 hours)."),
        ("ten", "Enter a whole number of seconds."),
        ("", "This field is required."),
    ],
)
def test_ttl_out_of_bounds_is_a_form_error_and_nothing_is_saved(acme, value, message) -> None:
    response = login(acme.key_admin, sudo=True).post(
        reverse("keys:set_cache_ttl", args=["acme"]), {"ttl": value}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    acme.tenant.refresh_from_db()
    assert acme.tenant.dek_cache_ttl == 300
    assert not AuditEvent.objects.filter(action="tenant.set_dek_cache_ttl").exists()


def test_ttl_saved_and_the_sentence_follows(acme) -> None:
    client = login(acme.owner, sudo=True)
    client.post(reverse("keys:set_cache_ttl", args=["acme"]), {"ttl": "120"})
    acme.tenant.refresh_from_db()
    assert acme.tenant.dek_cache_ttl == 120
    body = client.get(reverse("keys:overview", args=["acme"])).content.decode()
    assert "the key cache lifetime (2 minutes)" in body


def test_reencrypt_starts_a_job_with_progress(acme, django_capture_on_commit_callbacks) -> None:
    client = login(acme.key_admin, sudo=True)
    response = client.post(reverse("records:reencrypt", args=["acme"]), follow=True)
    assert "Re-encrypting 0 record(s)" in response.content.decode()
    job = ReencryptionJob.objects.get(tenant=acme.tenant)
    partial = client.get(
        reverse("records:reencrypt_progress", args=["acme"]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert partial.lstrip().startswith('<div id="reencrypt-progress"')
    assert 'hx-trigger="every 1s"' in partial  # queued: keeps polling
    assert f"{job.done} of {job.total} records" in partial


def test_support_staff_see_the_keys_page_but_cannot_act(acme, support) -> None:
    client = login(support, sudo=True)
    page = client.get(reverse("keys:overview", args=["acme"]))
    assert page.status_code == 200
    assert "Rotate data key now" not in page.content.decode()
    assert client.post(reverse("keys:rotate_dek", args=["acme"])).status_code == 403


def test_keys_page_counts_data_keys_per_kek_version(
    acme, django_capture_on_commit_callbacks
) -> None:
    from audit.services import Actor
    from keys.services.deks import dek_rotate

    dek_rotate(tenant=acme.tenant, actor=Actor.system("tests"), reason="two keys")
    body = login(acme.viewer).get(reverse("keys:overview", args=["acme"])).content.decode()
    table = body[body.index('data-testid="kek-table"') :]
    table = table[: table.index("</table>")]
    counts = [int(n) for n in re.findall(r"</td><td>[^<]*</td><td>(\d+)</td><td>", table)]
    assert sum(counts) == 2  # both live DEKs, under whichever root key versions wrap them
