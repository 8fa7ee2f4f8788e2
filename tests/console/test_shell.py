from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.services import Actor
from tenants.models import ServiceState
from tenants.services import membership_add
from tests.conftest import login, make_tenant


def test_anonymous_is_sent_to_login(client, db) -> None:
    response = client.get("/t/acme/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_member_sees_their_dashboard(acme) -> None:
    response = login(acme.viewer).get("/t/acme/")
    assert response.status_code == 200
    assert "Vendor-managed key" in response.content.decode()


def test_unknown_slug_is_404(acme) -> None:
    assert login(acme.owner).get("/t/nope/").status_code == 404


def test_another_tenant_is_404(acme, globex, outsider) -> None:
    assert login(acme.owner).get("/t/globex/").status_code == 404
    assert login(outsider).get("/t/acme/").status_code == 404


def test_single_tenant_users_land_on_their_dashboard(acme) -> None:
    response = login(acme.owner).get("/")
    assert response["Location"] == "/t/acme/"


def test_switcher_lists_every_tenant_of_the_user(acme, globex) -> None:
    membership_add(tenant=globex.tenant, user=acme.owner, role="viewer", actor=Actor.system())
    response = login(acme.owner).get("/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "/t/acme/" in body and "/t/globex/" in body


def test_support_staff_see_every_tenant_read_only(acme, globex, support) -> None:
    client = login(support)
    home = client.get("/")
    assert home.status_code == 302 and home["Location"] == reverse("support:list")
    body = client.get(reverse("support:list")).content.decode()
    assert "Acme" in body and "Globex" in body
    page = client.get("/t/acme/").content.decode()
    assert "Vendor support (metadata only)" in page
    assert "Recent activity" not in page  # the trail names people: not metadata
    assert client.get(reverse("audit:list", args=["acme"])).status_code == 403
    assert client.get(reverse("tenants:members", args=["acme"])).status_code == 403


def test_support_list_flags_paused_tenants(acme, globex, support) -> None:
    acme.tenant.state = ServiceState.ROTATION_PENDING
    acme.tenant.save()
    body = login(support).get(reverse("support:list")).content.decode()
    assert "Rotation pending since" in body


@pytest.mark.parametrize(
    ("state", "text"),
    [
        (ServiceState.ROTATION_PENDING, "Service paused: a key rotation needs your confirmation"),
        (ServiceState.REVOKED, "Key revoked: your data is unreadable"),
        (ServiceState.DEGRADED, "Key store unreachable"),
    ],
)
def test_banner_follows_the_tenant_state(acme, state, text) -> None:
    acme.tenant.state = state
    acme.tenant.save()
    client = login(acme.auditor)
    for url in ("/t/acme/", reverse("audit:list", args=["acme"])):
        assert text in client.get(url).content.decode()


def test_no_banner_in_a_healthy_state(acme) -> None:
    assert 'data-testid="state-banner"' not in login(acme.owner).get("/t/acme/").content.decode()


def test_healthz(client, db) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_a_tenant_page_reads_the_users_memberships_once(acme, globex) -> None:
    """The tenant check and the switcher share one read; the switcher still lists both."""
    initech = make_tenant("Initech", "initech")
    membership_add(tenant=globex.tenant, user=acme.owner, role="viewer", actor=Actor.system())
    client = login(acme.owner)
    client.get("/t/globex/")
    with CaptureQueriesContext(connection) as run:
        body = client.get("/t/globex/").content.decode()
    reads = [q["sql"] for q in run if q["sql"].startswith('SELECT "tenants_membership"')]
    assert len(reads) == 1, reads
    assert 'href="/t/acme/"' in body and 'href="/t/globex/"' in body
    # A tenant the user is not a member of is still a 404, as is one that does not
    # exist, and a role's limits hold.
    assert client.get(f"/t/{initech.tenant.slug}/").status_code == 404
    assert client.get("/t/nope/").status_code == 404
    assert login(acme.viewer).get(reverse("audit:list", args=["acme"])).status_code == 403


def test_support_staff_pages_read_no_membership_twice(acme, support) -> None:
    client = login(support)
    client.get("/t/acme/")
    with CaptureQueriesContext(connection) as run:
        assert client.get("/t/acme/").status_code == 200
    reads = [q["sql"] for q in run if q["sql"].startswith('SELECT "tenants_membership"')]
    assert len(reads) == 1, reads
