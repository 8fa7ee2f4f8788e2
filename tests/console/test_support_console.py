"""The support console's list: every tenant, filters, search, sorting, keyset pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.services import Actor
from console.support.selectors import Listing, support_tenant_page
from keys.models import (
    DataKey,
    HealthResult,
    KekState,
    KekVersion,
    KeyHealthCheck,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.services.deks import dek_rotate
from objects.models import Direction, Location, MigrationState, ObjectMigration
from objects.services import object_put
from records.fields import NewRecord
from records.services import record_delete, records_create
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.conftest import TenantUsers, login

SYSTEM = Actor.system("tests")
LIST = reverse("support:list")


def make_tenants(count: int, prefix: str = "t") -> list[Tenant]:
    return [
        tenant_create(name=f"{prefix.upper()} {i:03d}", slug=f"{prefix}-{i:03d}", actor=SYSTEM)
        for i in range(count)
    ]


def slugs(response: Any) -> list[str]:
    body = response.content.decode()
    return [
        chunk.split('"', 1)[0] for chunk in body.split('data-testid="support-row" data-slug="')[1:]
    ]


def set_state(tenant: Tenant, state: str, since: timedelta = timedelta()) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(state=state, state_changed_at=timezone.now() - since)


def test_members_and_anonymous_get_404(client, acme: TenantUsers, outsider) -> None:
    assert client.get(LIST).status_code == 404
    for user in (acme.owner, acme.key_admin, acme.viewer, outsider):
        assert login(user, sudo=True).get(LIST).status_code == 404
        assert (
            login(user, sudo=True).get(reverse("support:tenant", args=["acme"])).status_code == 404
        )


def test_every_tenant_in_one_table_with_its_columns(acme, globex, support) -> None:
    records_create(
        tenant=acme.tenant,
        items=[NewRecord("user", f"u-{i}", {"email": f"u{i}@example.com"}) for i in range(3)],
    )
    source = KeySource.objects.create(
        tenant=globex.tenant,
        kind=SourceKind.AWS_KMS,
        state=SourceState.TESTED,
        config={"key_arn": "arn:aws:kms:eu-west-1:111122223333:key/abc"},
    )
    KeyHealthCheck.objects.create(
        tenant=globex.tenant,
        source=source,
        result=HealthResult.DEGRADED,
        message="key store unreachable: timed out",
        first_at=timezone.now(),
        last_at=timezone.now(),
    )
    response = login(support).get(LIST)
    assert response.status_code == 200
    assert slugs(response) == ["acme", "globex"]
    body = response.content.decode()
    assert "3 · 0" in body  # acme's records and objects
    assert "degraded" in body  # globex's last check
    assert "Vendor-managed key" in body  # acme's active source
    assert "Tenants by state, last 30 days" in body  # the chart above the table


def test_counts_come_from_the_counters_not_the_data(acme, support) -> None:
    """Records under two data keys, one deleted, and an object: the list shows the
    exact figures, and the page's queries never read the tenants' data tables."""
    created = records_create(
        tenant=acme.tenant,
        items=[NewRecord("user", f"a-{i}", {"email": f"a{i}@example.com"}) for i in range(4)],
    )
    dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="a second data key")
    records_create(
        tenant=acme.tenant,
        items=[NewRecord("user", f"b-{i}", {"email": f"b{i}@example.com"}) for i in range(3)],
    )
    record_delete(tenant=acme.tenant, record=created[0], actor=SYSTEM)
    object_put(tenant=acme.tenant, key="reports/q1.csv", chunks=[b"a,b\n1,2\n"])
    client = login(support)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(LIST)
    assert response.status_code == 200
    assert "6 · 1" in response.content.decode()
    read = " ".join(q["sql"] for q in queries.captured_queries)
    for table in ("archive_record", "archive_sealedfields", "objects_storedobject"):
        assert table not in read, f"the list read {table}"


def test_filters_by_state_source_and_attention(support) -> None:
    calm, degraded, overdue, fresh, expiring, moved, failing = make_tenants(7)
    set_state(degraded, ServiceState.DEGRADED)
    set_state(overdue, ServiceState.ROTATION_PENDING, timedelta(days=2))
    set_state(fresh, ServiceState.ROTATION_PENDING, timedelta(hours=2))
    # Key material expiring within 30 days, on an active uploaded key.
    uploaded = KeySource.objects.create(
        tenant=expiring, kind=SourceKind.UPLOADED, state=SourceState.TESTED
    )
    KekVersion.objects.create(
        source=uploaded,
        provider_version="upload-1",
        state=KekState.ACTIVE,
        material_expires_at=timezone.now() + timedelta(days=10),
    )
    KeySource.objects.filter(tenant=expiring, kind=SourceKind.LOCAL).update(
        state=SourceState.RETIRED
    )
    KeySource.objects.filter(pk=uploaded.pk).update(state=SourceState.ACTIVE)
    ObjectMigration.objects.create(
        tenant=moved,
        direction=Direction.TO_DEDICATED,
        state=MigrationState.FAILED,
        source_location=Location.SHARED,
        target_location=Location.DEDICATED,
        target_dek=DataKey.objects.get(tenant=moved, version=1),
    )
    KeyHealthCheck.objects.create(
        tenant=failing,
        result=HealthResult.ERROR,
        message="the check failed",
        first_at=timezone.now(),
        last_at=timezone.now(),
    )
    client = login(support)
    assert slugs(client.get(LIST, {"state": "degraded"})) == [degraded.slug]
    assert slugs(client.get(LIST, {"source": "uploaded"})) == [expiring.slug]
    assert slugs(client.get(LIST, {"attention": "on"})) == [
        degraded.slug,
        overdue.slug,
        expiring.slug,
        moved.slug,
        failing.slug,
    ]
    both = client.get(LIST, {"attention": "on", "state": "rotation_pending"})
    assert slugs(both) == [overdue.slug]
    assert fresh.slug not in slugs(client.get(LIST, {"attention": "on"}))
    assert calm.slug in slugs(client.get(LIST))


def test_search_by_name_or_slug(support) -> None:
    tenant_create(name="Initech", slug="initrode", actor=SYSTEM)
    tenant_create(name="Hooli", slug="hooli", actor=SYSTEM)
    client = login(support)
    assert slugs(client.get(LIST, {"q": "inite"})) == ["initrode"]  # by name
    assert slugs(client.get(LIST, {"q": "TRODE"})) == ["initrode"]  # by slug, any case
    assert slugs(client.get(LIST, {"q": "nothing-like-it"})) == []


def test_sorting_by_each_column_both_ways(support) -> None:
    a, b, c = make_tenants(3)
    set_state(a, ServiceState.VENDOR_MANAGED, timedelta(days=1))
    set_state(b, ServiceState.VENDOR_MANAGED, timedelta(days=3))
    set_state(c, ServiceState.VENDOR_MANAGED, timedelta(days=2))
    client = login(support)
    assert slugs(client.get(LIST, {"sort": "name", "dir": "desc"})) == [c.slug, b.slug, a.slug]
    assert slugs(client.get(LIST, {"sort": "since"})) == [b.slug, c.slug, a.slug]
    assert slugs(client.get(LIST, {"sort": "since", "dir": "desc"})) == [a.slug, c.slug, b.slug]
    KeyHealthCheck.objects.create(
        tenant=c, result=HealthResult.OK, first_at=timezone.now(), last_at=timezone.now()
    )
    # Never checked sorts as the oldest.
    assert slugs(client.get(LIST, {"sort": "check", "dir": "desc"}))[0] == c.slug
    # Last activity: every tenant_create wrote an event, the last one made is the newest.
    assert slugs(client.get(LIST, {"sort": "activity", "dir": "desc"}))[0] == c.slug


@pytest.mark.parametrize(("sort", "descending"), [("name", False), ("since", True)])
def test_keyset_pages_cover_every_tenant_once(support, sort, descending) -> None:
    make_tenants(120)
    listing = Listing(sort=sort, descending=descending)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = support_tenant_page(listing, after)
        pages += 1
        seen += [t.slug for t in page.rows]
        assert len(page.rows) <= 50
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert pages == 3
    assert sorted(seen) == sorted(Tenant.objects.values_list("slug", flat=True))
    assert len(seen) == len(set(seen))


def test_next_page_link_works_without_js_and_is_a_keyset(support) -> None:
    make_tenants(55)
    client = login(support)
    first = client.get(LIST)
    assert len(slugs(first)) == 50
    body = first.content.decode()
    assert 'data-testid="next-page"' in body
    next_href = body.split('data-testid="next-page"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert "after=" in next_href and "offset" not in next_href and "page=" not in next_href
    second = client.get(next_href.replace("&amp;", "&"))
    assert slugs(second) == [f"t-{i:03d}" for i in range(50, 55)]


def test_htmx_gets_only_the_results_region(support) -> None:
    make_tenants(2)
    response = login(support).get(LIST, {"q": "t-001"}, headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="support-results">')
    assert "<html" not in body
    assert slugs(response) == ["t-001"]


def test_bad_filters_and_cursors_are_refused_with_a_message(support) -> None:
    make_tenants(2)
    client = login(support)
    bad_state = client.get(LIST, {"state": "exploded"})
    assert bad_state.status_code == 400
    assert "Select a valid choice" in bad_state.content.decode()
    assert slugs(bad_state) == []
    bad_cursor = client.get(LIST, {"after": "not-a-cursor"})
    assert bad_cursor.status_code == 400
    assert "That page link is not valid" in bad_cursor.content.decode()


def test_one_query_per_page_whatever_the_number_of_tenants(
    support, django_assert_max_num_queries
) -> None:
    tenants = make_tenants(60)
    for tenant in tenants[:20]:
        records_create(tenant=tenant, items=[NewRecord("device", "d-1", {})])
        KeyHealthCheck.objects.create(
            tenant=tenant, result=HealthResult.OK, first_at=timezone.now(), last_at=timezone.now()
        )
    client = login(support)
    client.get(LIST)  # the session and the user are loaded once per request either way
    # The session, the user, the shell's tenant switcher, the chart of tenants by
    # state, and one query for the page of 50.
    with django_assert_max_num_queries(5):
        response = client.get(LIST, {"attention": "", "sort": "activity"})
    assert len(slugs(response)) == 50
    # What htmx swaps: the page's one query besides the session and the user.
    with django_assert_max_num_queries(3):
        client.get(LIST, {"state": "vendor_managed", "q": "T 0"}, headers={"HX-Request": "true"})
