"""Hourly key usage, data per key and tenant states, and the charts drawn from them."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.services import Actor
from keys.charts import nice_max
from keys.models import DataKey, DataKeyVolume, KeySource, KeyUsageHour, TenantStateDay
from keys.providers.base import KeyProviderError
from keys.registry import provider_for
from keys.runtime import envelope, reset_for_tests
from keys.selectors.overview import RevocationBound
from keys.selectors.usage import (
    revocation_chart,
    rotation_chart,
    tenant_states_chart,
    usage_charts,
    volume_charts,
)
from keys.services.deks import dek_rotate
from keys.usage import flush_usage, note, sample_volumes, take_pending
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tests.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = Actor.system("tests")


def start_counting() -> None:
    """Forget what setting up the test counted (making a tenant wraps its first DEK)."""
    take_pending()
    envelope().cache.take_uses()


def usage(tenant: Any) -> dict[tuple[str, str], int]:
    return {
        (row.kind, row.outcome): row.count for row in KeyUsageHour.objects.filter(tenant=tenant)
    }


def test_key_store_calls_and_cache_use_are_counted_per_tenant_and_hour(acme, globex) -> None:
    reset_for_tests()
    rows = records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    envelope().cache.clear()
    start_counting()
    for row in rows:
        record_fields(acme.tenant, row)
    flush_usage()
    counted = usage(acme.tenant)
    # Reading after the cache was cleared unwrapped the DEK once. The envelope
    # asks its cache once per record kind here (then keeps the keys until the
    # next key-state read): the second kind's lookup was a hit.
    assert counted == {("unwrap", "ok"): 1, ("cache", "miss"): 1, ("cache", "hit"): 1}
    assert usage(globex.tenant) == {}
    hours = set(KeyUsageHour.objects.filter(tenant=acme.tenant).values_list("hour", flat=True))
    assert hours == {timezone.now().replace(minute=0, second=0, microsecond=0)}


def test_a_failed_key_store_call_is_counted_as_failed_and_still_raised(acme) -> None:
    source = KeySource.objects.get(tenant=acme.tenant)
    provider = provider_for(source)
    start_counting()
    with pytest.raises(KeyProviderError):
        provider.unwrap(b"\x00" * 60, {"tenant": str(acme.tenant.pk)}, "1")
    flush_usage()
    assert usage(acme.tenant)[("unwrap", "error")] == 1


def test_flushes_add_up_and_a_removed_tenant_is_skipped(acme) -> None:
    start_counting()
    note(str(acme.tenant.pk), "wrap", "ok", 2)
    flush_usage()
    note(str(acme.tenant.pk), "wrap", "ok", 3)
    note("00000000-0000-0000-0000-000000000000", "wrap", "ok", 1)
    flush_usage()
    assert usage(acme.tenant)[("wrap", "ok")] == 5
    assert KeyUsageHour.objects.count() == 1
    flush_usage()  # nothing pending: nothing written
    assert usage(acme.tenant)[("wrap", "ok")] == 5


def test_sampling_records_data_per_key_and_tenants_per_state(acme, globex) -> None:
    records_create(tenant=acme.tenant, items=list(synthetic_records(4)))
    dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="test")
    reset_for_tests()  # this process re-reads the tenant's key state at once
    records_create(tenant=acme.tenant, items=list(synthetic_records(2, prefix="b")))
    today = timezone.now().date()
    sample_volumes(today)
    v1, v2 = DataKey.objects.filter(tenant=acme.tenant).order_by("version")
    volumes = {v.data_key_id: v.records for v in DataKeyVolume.objects.filter(day=today)}
    assert volumes[v1.pk] == 4 and volumes[v2.pk] == 2
    assert dict(TenantStateDay.objects.filter(day=today).values_list("state", "tenants")) == {
        "vendor_managed": 2
    }
    # A later sample of the same day replaces the figures; it does not add to them.
    records_create(tenant=acme.tenant, items=list(synthetic_records(1, prefix="c")))
    sample_volumes(today)
    assert DataKeyVolume.objects.get(day=today, data_key=v2).records == 3
    assert TenantStateDay.objects.get(day=today).tenants == 2


def test_usage_charts_draw_the_hours_and_list_the_numbers(acme) -> None:
    now = datetime(2026, 12, 3, 14, 30, tzinfo=UTC)
    hour = now.replace(minute=0)
    rows = [
        ("unwrap", "ok", 40, hour),
        ("unwrap", "error", 2, hour),
        ("wrap", "ok", 10, hour - timedelta(hours=5)),
        ("cache", "hit", 900, hour),
        ("cache", "miss", 100, hour),
        ("unwrap", "ok", 99, hour - timedelta(days=8)),  # outside the 7 days
    ]
    KeyUsageHour.objects.bulk_create(
        KeyUsageHour(tenant=acme.tenant, kind=k, outcome=o, count=n, hour=h) for k, o, n, h in rows
    )
    calls, cache = usage_charts(acme.tenant, now)
    assert calls.description == "52 calls to the key store in 7 days, 2 of them failed."
    assert len(calls.rects) == 3  # unwraps and failures this hour, wraps 5 hours ago
    assert calls.head == ["Hour (UTC)", "Wrap", "Unwrap", "Failed", "Cache hits"]
    assert calls.rows == [
        ["2026-12-03 09:00 UTC", "10", "0", "0", ""],
        ["2026-12-03 14:00 UTC", "0", "40", "2", "90.0 %"],
    ]
    # This hour's column: 40 unwraps and 2 failures stacked on a 0 to 50 axis.
    column = [r for r in calls.rects if r.tip.startswith("2026-12-03 14:00")]
    assert sum(r.h for r in column) == pytest.approx(164 * 42 / nice_max(42), abs=0.02)
    assert nice_max(42) == 50
    assert cache.description.startswith("90.0 % of 1,000 lookups in the data key cache")
    assert cache.rows == [["2026-12-03 14:00 UTC", "900", "100", "90.0 %"]]
    assert len(cache.lines) == 1


def test_charts_without_figures_say_so(acme) -> None:
    calls, cache = usage_charts(acme.tenant, timezone.now())
    assert calls.empty == "No key-store calls in the last 7 days." and not calls.rects
    assert cache.empty == "No data key lookups in the last 7 days."


def test_the_revocation_timeline_names_the_moment_reads_stop() -> None:
    now = datetime(2026, 12, 3, 14, 30, 0, tzinfo=UTC)
    chart = revocation_chart(RevocationBound(True, cache_seconds=300, check_seconds=60), now)
    assert chart.title == "Cut access now: reads stop by 14:36:00 UTC at the latest"
    assert chart.rows[-1] == ["No cached data key is used any more, at the latest", "14:36:00"]
    first, second = chart.rects
    assert first.x < second.x and first.w == pytest.approx(second.w * 60 / 300, rel=0.02)


def test_volume_and_rotation_charts_follow_the_keys(acme) -> None:
    records_create(tenant=acme.tenant, items=list(synthetic_records(3)))
    dek_rotate(tenant=acme.tenant, actor=SYSTEM, reason="test")
    today = timezone.now().date()
    sample_volumes(today - timedelta(days=1))
    sample_volumes(today)
    records, objects = volume_charts(acme.tenant, today)
    assert [row[0] for row in records.rows] == [
        (today - timedelta(days=1)).isoformat(),
        today.isoformat(),
    ]
    assert records.head[1].startswith("Under data key v1 (KEK version 1)")
    assert objects.empty == "No objects sampled in the last 30 days."
    timeline = rotation_chart(acme.tenant, timezone.now())
    assert [t.text for t in timeline.labels] == ["KEK v1", "DEK v1", "DEK v2"]
    assert len(timeline.rects) == 3


def test_tenant_states_chart_stacks_the_days(acme, globex) -> None:
    today = date(2026, 12, 3)
    TenantStateDay.objects.bulk_create(
        [
            TenantStateDay(day=today - timedelta(days=1), state="vendor_managed", tenants=2),
            TenantStateDay(day=today, state="vendor_managed", tenants=1),
            TenantStateDay(day=today, state="revoked", tenants=1),
        ]
    )
    chart = tenant_states_chart(today)
    assert chart.description == "Vendor-managed key: 1, Revoked: 1"
    assert chart.rows[-1] == ["2026-12-03", "1", "1"]
    assert {r.css for r in chart.rects} == {"c6", "c-error"}


def test_the_overview_and_keys_pages_draw_accessible_charts(acme) -> None:
    records_create(tenant=acme.tenant, items=list(synthetic_records(2)))
    flush_usage()
    sample_volumes(timezone.now().date())
    client = login(acme.viewer)
    overview = client.get(f"/t/{acme.tenant.slug}/").content.decode()
    assert 'data-testid="chart-key-store-calls"' in overview
    assert 'data-testid="chart-cache-hit-ratio"' in overview
    # A vendor-managed tenant has no key of its own to cut off: no timeline.
    assert "chart-revocation-bound" not in overview
    keys_page = client.get(f"/t/{acme.tenant.slug}/keys/").content.decode()
    for chart in ("rotation-timeline", "records-per-key"):
        svg = re.search(rf'data-testid="chart-{chart}".*?</svg>', keys_page, re.S)
        assert svg, chart
        assert f'aria-labelledby="{chart}-title {chart}-desc"' in svg.group(0)
        assert "<title" in svg.group(0) and "<desc" in svg.group(0)
        assert "style=" not in svg.group(0)  # the CSP has no unsafe-inline
    assert "Show the numbers" in keys_page
