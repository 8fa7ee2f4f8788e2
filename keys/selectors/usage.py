"""The console's charts of key use: read from the hourly and daily tables, never the trail
(but for the handful of rotation markers, found by their indexed actions)."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from django.db.models import Q, Subquery

from audit.models import AuditEvent
from audit.services import chain_key
from keys.charts import Chart, Event, Legend, Span, Tick, ratio_line, stacked_bars, timeline
from keys.models import (
    DataKey,
    DataKeyVolume,
    DekState,
    KekState,
    KekVersion,
    KeyUsageHour,
    TenantStateDay,
)
from keys.selectors.overview import RevocationBound
from keys.usage import CACHE, ERROR, HIT, KEY_STORE_OPERATIONS, MISS, OK
from tenants.models import ServiceState, Tenant

USAGE_HOURS = 7 * 24
# Data keys drawn on the rotation timeline, besides those still in use: the newest.
TIMELINE_DEKS = 50
HISTORY_DAYS = 30
# Audit actions drawn on the rotation timeline: (marker class, what it says).
ROTATION_MARKERS = {
    "key.rotation_detected": ("m-detected", "Rotation detected"),
    "kek.confirm_rotation": ("m-confirmed", "Rotation confirmed"),
    "key.revoke": ("m-revoked", "Revoked"),
    "key.revoked": ("m-revoked", "Revoked (key store)"),
    "key.restore": ("m-restored", "Restored"),
}


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _day_ticks(columns: list[datetime]) -> list[Tick]:
    return [Tick(i, c.strftime("%a %d")) for i, c in enumerate(columns) if c.hour == 0]


def _ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def usage_charts(tenant: Tenant, now: datetime) -> tuple[Chart, Chart]:
    """Key-store calls per hour by operation and outcome, and the DEK cache hit ratio,
    over the last seven days."""
    first = _hour(now) - timedelta(hours=USAGE_HOURS - 1)
    hours = [first + timedelta(hours=i) for i in range(USAGE_HOURS)]
    index = {h: i for i, h in enumerate(hours)}
    calls: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * USAGE_HOURS)
    for hour, kind, outcome, count in KeyUsageHour.objects.filter(
        tenant=tenant, hour__gte=first
    ).values_list("hour", "kind", "outcome", "count"):
        i = index.get(_hour(hour))
        if i is not None:
            calls[(kind, outcome)][i] += count
    operations = [op for op in KEY_STORE_OPERATIONS if (op, OK) in calls]
    series = [
        (KEY_STORE_OPERATIONS[op], f"c{n % 7}", calls[(op, OK)]) for n, op in enumerate(operations)
    ]
    errors = [sum(calls[(op, ERROR)][i] for op in KEY_STORE_OPERATIONS) for i in range(USAGE_HOURS)]
    series.append(("Failed", "c-error", errors))
    hits, misses = (
        calls.get((CACHE, HIT), [0.0] * USAGE_HOURS),
        calls.get((CACHE, MISS), [0.0] * USAGE_HOURS),
    )
    ratios = [_ratio(int(hits[i]), int(misses[i])) for i in range(USAGE_HOURS)]
    labels = [f"{h:%Y-%m-%d %H}:00 UTC" for h in hours]

    head = ["Hour (UTC)", *(KEY_STORE_OPERATIONS[op] for op in operations), "Failed", "Cache hits"]
    rows = []
    for i, label in enumerate(labels):
        figures = [calls[(op, OK)][i] for op in operations] + [errors[i]]
        if any(figures) or ratios[i] is not None:
            ratio = "" if ratios[i] is None else f"{100 * (ratios[i] or 0):.1f} %"
            rows.append([label, *(f"{v:,.0f}" for v in figures), ratio])
    ticks = _day_ticks(hours)
    calls_chart = stacked_bars(
        id="key-store-calls",
        title="Key-store calls per hour, last 7 days",
        description=(
            f"{sum(sum(s[2]) for s in series):,.0f} calls to the key store in 7 days, "
            f"{sum(errors):,.0f} of them failed."
        ),
        columns=labels,
        column_ticks=ticks,
        series=series,
        unit="calls",
        head=head,
        rows=rows,
        empty="No key-store calls in the last 7 days.",
    )
    total_hits, total_misses = int(sum(hits)), int(sum(misses))
    overall = _ratio(total_hits, total_misses)
    cache_chart = ratio_line(
        id="cache-hit-ratio",
        title="Data key cache hit ratio per hour, last 7 days",
        description=(
            "No key lookups in 7 days."
            if overall is None
            else f"{100 * overall:.1f} % of {total_hits + total_misses:,} lookups in the data "
            f"key cache were served from memory; {total_misses:,} needed the key store."
        ),
        columns=labels,
        column_ticks=ticks,
        ratios=ratios,
        head=["Hour (UTC)", "Hits", "Loads from the key store", "Hit ratio"],
        rows=[
            [labels[i], f"{hits[i]:,.0f}", f"{misses[i]:,.0f}", f"{100 * (ratios[i] or 0):.1f} %"]
            for i in range(USAGE_HOURS)
            if ratios[i] is not None
        ],
        empty="No data key lookups in the last 7 days.",
    )
    return calls_chart, cache_chart


def revocation_chart(bound: RevocationBound, now: datetime) -> Chart:
    """What happens after the customer cuts access now, up to the moment reads stop."""
    checked = now + timedelta(seconds=bound.check_seconds)
    stop = now + timedelta(seconds=bound.seconds)
    spans = [
        Span("Bound", now, checked, "c1", f"Health check notices within {bound.check_seconds} s"),
        Span(
            "Bound",
            checked,
            stop,
            "c0",
            f"A key unwrapped just before serves at most the cache lifetime, "
            f"{bound.cache_seconds} s",
        ),
    ]
    return timeline(
        id="revocation-bound",
        title=f"Cut access now: reads stop by {stop:%H:%M:%S} UTC at the latest",
        description=(
            f"If access to the key is cut at {now:%H:%M:%S} UTC, Keyward reads no data after "
            f"{stop:%H:%M:%S} UTC: the health-check interval ({bound.check_seconds} s) plus "
            f"the key cache lifetime ({bound.cache_seconds} s)."
        ),
        spans=spans,
        events=[Event(now, "m-revoked", "Access cut"), Event(stop, "m-restored", "Reads stop")],
        start=now,
        end=stop,
        tick_format="%H:%M:%S",
        legend=[Legend("c1", "Health-check interval"), Legend("c0", "Key cache lifetime")],
        head=["Step", "At (UTC)"],
        rows=[
            ["Access cut in the key store", f"{now:%H:%M:%S}"],
            ["A health check has seen it, at the latest", f"{checked:%H:%M:%S}"],
            ["No cached data key is used any more, at the latest", f"{stop:%H:%M:%S}"],
        ],
        empty="",
        rows_share_one_line=True,
    )


def _kek_label(kek_versions: dict[str, int], kek_id: str) -> str:
    return f"KEK version {kek_versions.get(kek_id, 0) + 1}"


def volume_charts(tenant: Tenant, today: date) -> tuple[Chart, Chart]:
    """Records and objects under each data key per day, coloured by the KEK version
    that wraps the data key, over the last 30 days."""
    first = today - timedelta(days=HISTORY_DAYS - 1)
    days = [first + timedelta(days=i) for i in range(HISTORY_DAYS)]
    index = {d: i for i, d in enumerate(days)}
    keks = {
        str(pk): n
        for n, pk in enumerate(
            KekVersion.objects.filter(source__tenant=tenant)
            .order_by("created")
            .values_list("pk", flat=True)
        )
    }
    records: dict[int, list[float]] = defaultdict(lambda: [0.0] * HISTORY_DAYS)
    stored: dict[int, list[float]] = defaultdict(lambda: [0.0] * HISTORY_DAYS)
    for dek_id, day, n_records, n_objects in DataKeyVolume.objects.filter(
        tenant=tenant, day__gte=first
    ).values_list("data_key_id", "day", "records", "stored_objects"):
        records[dek_id][index[day]] = n_records
        stored[dek_id][index[day]] = n_objects
    # Only the keys sampled in the window: a tenant may have a thousand older ones.
    deks = {
        d.pk: d
        for d in DataKey.objects.filter(tenant=tenant, pk__in=list(records)).only(
            "pk", "version", "kek_version"
        )
    }
    columns = [d.isoformat() for d in days]
    ticks = [Tick(i, d.strftime("%d %b")) for i, d in enumerate(days) if i % 5 == 0]

    def chart(kind: str, figures: dict[int, list[float]]) -> Chart:
        order = sorted(figures, key=lambda pk: deks[pk].version if pk in deks else 0)
        series = []
        for pk in order:
            if pk not in deks:
                continue
            kek = str(deks[pk].kek_version_id)
            name = f"under data key v{deks[pk].version} ({_kek_label(keks, kek)})"
            series.append((name, f"c{keks.get(kek, 0) % 7}", figures[pk]))
        latest = {name: values[-1] for name, _css, values in series}
        return stacked_bars(
            id=f"{kind}-per-key",
            title=f"{kind.capitalize()} per data key, last {HISTORY_DAYS} days",
            description=(
                f"Today: {sum(latest.values()):,.0f} {kind} under "
                f"{sum(1 for v in latest.values() if v)} data key(s); each colour is the "
                "key encryption key version that wraps them."
            ),
            columns=columns,
            column_ticks=ticks,
            series=series,
            unit=kind,
            head=["Day", *(name[:1].upper() + name[1:] for name, _c, _v in series)],
            rows=[
                [columns[i], *(f"{values[i]:,.0f}" for _n, _c, values in series)]
                for i in range(HISTORY_DAYS)
                if any(values[i] for _n, _c, values in series)
            ],
            empty=f"No {kind} sampled in the last {HISTORY_DAYS} days.",
        )

    return chart("records", records), chart("objects", stored)


def rotation_chart(tenant: Tenant, now: datetime) -> Chart:
    """Key encryption key versions and data keys as bars over their lifetimes, with
    rotations, revocations and restores as markers."""
    keks = list(
        KekVersion.objects.filter(source__tenant=tenant)
        .only("pk", "created", "state")
        .order_by("created")
    )
    # The newest data keys and every one still in use: a bar per key for years of
    # weekly rotations would be a thousand bars no one can read.
    newest = DataKey.objects.filter(tenant=tenant).order_by("-version")[:TIMELINE_DEKS]
    deks = sorted(
        DataKey.objects.filter(tenant=tenant)
        .filter(
            Q(pk__in=Subquery(newest.values("pk")))
            | Q(state__in=[DekState.ACTIVE, DekState.RETIRING])
        )
        .only("pk", "version", "kek_version_id", "state", "created", "retired_at"),
        key=lambda d: d.version,
    )
    starts = [k.created for k in keks] + [d.created for d in deks]
    # At least a day, so that a young key still shows as a bar that ends now.
    start = min([*starts, now - timedelta(days=1)])
    spans: list[Span] = []
    rows: list[list[str]] = []
    for n, kek in enumerate(keks):
        later = [k.created for k in keks[n + 1 :] if k.state != KekState.PENDING]
        end = now if kek.state in (KekState.ACTIVE, KekState.PENDING) or not later else later[0]
        label, state = f"KEK v{n + 1}", KekState(kek.state).label
        spans.append(Span(label, kek.created, end, f"c{n % 7}", f"{label} ({state})"))
        rows.append([label, f"{kek.created:%Y-%m-%d %H:%M}", state])
    kek_index = {k.pk: n for n, k in enumerate(keks)}
    for dek in deks:
        end = dek.retired_at or now
        label = f"DEK v{dek.version}"
        css = f"c{kek_index.get(dek.kek_version_id, 0) % 7}"
        state = DekState(dek.state).label
        spans.append(Span(label, dek.created, end, css, f"{label} ({state})"))
        rows.append([label, f"{dek.created:%Y-%m-%d %H:%M}", state])
    marked = AuditEvent.objects.filter(
        chain=chain_key(tenant), action__in=list(ROTATION_MARKERS), time__gte=start
    ).order_by("-seq")
    events = []
    for at, action in marked.values_list("time", "action")[:200]:
        css, what = ROTATION_MARKERS[action]
        events.append(Event(at, css, f"{what}, {at:%Y-%m-%d %H:%M} UTC"))
        rows.append([what, f"{at:%Y-%m-%d %H:%M}", ""])
    return timeline(
        id="rotation-timeline",
        title="Rotation timeline",
        description=(
            f"{len(keks)} key encryption key version(s) and {len(deks)} data key(s) since "
            f"{start:%Y-%m-%d}; {len(events)} rotation, revocation or restore event(s)."
        ),
        spans=spans,
        events=events,
        start=start,
        end=now,
        tick_format="%d %b" if now - start > timedelta(days=3) else "%d %b %H:%M",
        legend=[
            Legend("m-detected", "Rotation detected"),
            Legend("m-confirmed", "Rotation confirmed"),
            Legend("m-revoked", "Revoked"),
            Legend("m-restored", "Restored"),
        ],
        head=["Key or event", "Since (UTC)", "State"],
        rows=rows,
        empty="No keys yet.",
    )


STATE_CSS = {
    ServiceState.VENDOR_MANAGED: "c6",
    ServiceState.BYOK_ACTIVE: "c0",
    ServiceState.MIGRATING: "c1",
    ServiceState.MIGRATING_BACK: "c1",
    ServiceState.REWRAPPING: "c2",
    ServiceState.ROTATION_PENDING: "c3",
    ServiceState.DEGRADED: "c-warn",
    ServiceState.REVOKED: "c-error",
    ServiceState.DESTROYED: "c5",
}


def tenant_states_chart(today: date) -> Chart:
    """Tenants by state per day over the last 30 days (support console)."""
    first = today - timedelta(days=HISTORY_DAYS - 1)
    days = [first + timedelta(days=i) for i in range(HISTORY_DAYS)]
    index = {d: i for i, d in enumerate(days)}
    figures: dict[str, list[float]] = defaultdict(lambda: [0.0] * HISTORY_DAYS)
    for day, state, n in TenantStateDay.objects.filter(day__gte=first).values_list(
        "day", "state", "tenants"
    ):
        figures[state][index[day]] = n
    names = dict(ServiceState.choices)
    states = [s for s in names if s in figures]
    series = [(names[s].lower(), STATE_CSS.get(ServiceState(s), "c4"), figures[s]) for s in states]
    columns = [d.isoformat() for d in days]
    return stacked_bars(
        id="tenants-by-state",
        title=f"Tenants by state, last {HISTORY_DAYS} days",
        description=", ".join(f"{names[s]}: {figures[s][-1]:,.0f}" for s in states) or "",
        columns=columns,
        column_ticks=[Tick(i, d.strftime("%d %b")) for i, d in enumerate(days) if i % 5 == 0],
        series=series,
        unit="tenants",
        head=["Day", *(names[s] for s in states)],
        rows=[
            [columns[i], *(f"{figures[s][i]:,.0f}" for s in states)]
            for i in range(HISTORY_DAYS)
            if any(figures[s][i] for s in states)
        ],
        empty=f"No tenant states sampled in the last {HISTORY_DAYS} days.",
    )
