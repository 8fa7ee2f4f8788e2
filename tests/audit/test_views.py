from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent, Outcome
from audit.selectors import AuditFilters, audit_events_for_tenant, audit_page
from audit.services import Actor, record
from tests.conftest import login


@pytest.fixture
def trail(acme, globex):
    for i in range(30):
        record(
            tenant=acme.tenant,
            actor=Actor("user", "1", "alice@acme.test" if i % 2 else "bob@acme.test"),
            action="key.test" if i % 3 else "key.enable",
            outcome=Outcome.FAILURE if i % 5 == 0 else Outcome.SUCCESS,
            target=f"=cmd{i}",
        )
    record(tenant=globex.tenant, actor=Actor.system(), action="globex.secret")
    return acme


def rows(response) -> list[str]:
    return [
        line for line in response.content.decode().splitlines() if 'data-testid="audit-row"' in line
    ]


@pytest.mark.parametrize("role", ["owner", "key_admin", "auditor"])
def test_roles_that_read_the_trail(trail, role) -> None:
    response = login(getattr(trail, role)).get(reverse("audit:list", args=["acme"]))
    assert response.status_code == 200
    assert "globex.secret" not in response.content.decode()


def test_viewer_cannot_read_the_trail(trail) -> None:
    assert login(trail.viewer).get(reverse("audit:list", args=["acme"])).status_code == 403


def test_other_tenant_is_404(trail, globex) -> None:
    assert login(globex.owner).get(reverse("audit:list", args=["acme"])).status_code == 404
    assert login(globex.owner).get(reverse("audit:export_csv", args=["acme"])).status_code == 404


def test_wrong_method(trail) -> None:
    assert login(trail.owner).post(reverse("audit:list", args=["acme"])).status_code == 405


@override_settings(KEYWARD_AUDIT_PAGE_SIZE=10)
def test_keyset_pages_walk_the_whole_trail_once(trail) -> None:
    client = login(trail.auditor)
    url = reverse("audit:list", args=["acme"]) + "?action=key.test"
    seen: list[int] = []
    while url:
        response = client.get(url)
        page = response.context["events"]
        seen += [e.seq for e in page]
        before = response.context["next_before"]
        url = (
            f"{reverse('audit:list', args=['acme'])}?action=key.test&before={before}"
            if before
            else ""
        )
    expected = list(
        AuditEvent.objects.filter(tenant=trail.tenant, action="key.test")
        .order_by("-seq")
        .values_list("seq", flat=True)
    )
    assert seen == expected


def test_filters_combine(trail) -> None:
    response = login(trail.auditor).get(
        reverse("audit:list", args=["acme"]),
        {"action": "key.enable", "actor": "bob@acme.test", "outcome": "failure"},
    )
    events = response.context["events"]
    assert events
    assert all(
        e.action == "key.enable" and e.actor_display == "bob@acme.test" and e.outcome == "failure"
        for e in events
    )


def test_the_actor_filter_finds_a_person_by_email_whatever_their_role_was(trail) -> None:
    for role in ("Key administrator", "Owner"):
        record(
            tenant=trail.tenant, actor=Actor("user", "1", f"bob@acme.test ({role})"), action="x.y"
        )
    record(
        tenant=trail.tenant, actor=Actor("user", "3", "bob@acme.test.evil (Owner)"), action="x.y"
    )
    response = login(trail.auditor).get(
        reverse("audit:list", args=["acme"]), {"action": "x.y", "actor": "bob@acme.test"}
    )
    assert sorted(e.actor_display for e in response.context["events"]) == [
        "bob@acme.test (Key administrator)",
        "bob@acme.test (Owner)",
    ]
    bare = login(trail.auditor).get(
        reverse("audit:list", args=["acme"]), {"action": "key.enable", "actor": "bob@acme.test"}
    )
    assert bare.context["events"]  # events recorded before roles were shown


def test_the_filter_form_and_the_pager_get_only_the_results_partial(trail) -> None:
    """What htmx sends for them: the request and its target, `#results`."""
    client = login(trail.auditor)
    with CaptureQueriesContext(connection) as run:
        response = client.get(
            reverse("audit:list", args=["acme"]),
            {"outcome": "failure"},
            headers={"HX-Request": "true", "HX-Target": "results"},
        )
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="results">')
    assert "<html" not in body
    assert len(rows(response)) == 6
    # Session, user, membership, the page of events: none of the page's shell
    # (banners, live poller, stream state) is read for a partial that shows none.
    assert len(run) == 4, [q["sql"] for q in run]


def test_the_live_refresh_gets_the_whole_page(trail) -> None:
    """The page's live region asks with its own target; a table alone would wipe it."""
    response = login(trail.auditor).get(
        reverse("audit:list", args=["acme"]),
        headers={"HX-Request": "true", "HX-Target": "live-root"},
    )
    body = response.content.decode()
    assert 'id="live-root"' in body
    assert 'id="results"' in body
    assert 'data-testid="live-poll"' in body


def test_bad_filters_show_errors_and_no_rows(trail) -> None:
    response = login(trail.auditor).get(
        reverse("audit:list", args=["acme"]),
        {"date_from": "2026-02-01", "date_to": "2026-01-01", "action": "DROP TABLE"},
    )
    body = response.content.decode()
    assert "The end date is before the start date." in body
    assert "Action names are lowercase words joined by dots." in body
    assert not rows(response)


def test_the_filter_form_shows_what_was_asked(trail) -> None:
    """The form comes back as it was sent: the outcome chosen, the dates typed, a bad
    one marked invalid, every action offered as a suggestion."""
    client = login(trail.auditor)
    url = reverse("audit:list", args=["acme"])
    body = client.get(url).content.decode()
    assert '<option value="" selected>Any outcome</option>' in body
    assert '<option value="failure">Failure</option>' in body
    assert '<input type="date" name="date_from" id="id_date_from" value="">' in body
    assert '<option value="byok.enable">' in body and '<option value="tenant.update">' in body
    sent = {"outcome": "failure", "date_from": "2026-01-02", "date_to": "2026-13-45"}
    body = client.get(url, sent).content.decode()
    assert '<option value="failure" selected>Failure</option>' in body
    assert '<option value="" selected>' not in body
    assert 'id="id_date_from" value="2026-01-02">' in body
    assert 'id="id_date_to" value="2026-13-45" aria-invalid="true">' in body
    body = client.get(url, {"date_from": '"><script>x</script>'}).content.decode()
    assert "<script>x</script>" not in body and "&lt;script&gt;" in body


def test_date_range(trail) -> None:
    today = AuditEvent.objects.filter(tenant=trail.tenant).latest("seq").time.date()
    client = login(trail.auditor)
    url = reverse("audit:list", args=["acme"])
    assert client.get(url, {"date_from": today.isoformat(), "date_to": today.isoformat()}).context[
        "events"
    ]
    assert not client.get(url, {"date_to": "2000-01-01"}).context["events"]


def test_date_ranges_over_days_in_one_statement(acme, monkeypatch) -> None:
    """Events on five days, three of each day's at one same instant (midnight, the
    edge of a range): each range gives exactly its days' events, newest first,
    alone or with another filter, read by the page's one statement."""
    # Days to come: `record` never writes a time before the chain's last one.
    first_day = timezone.now().date() + timedelta(days=400)
    days = [first_day + timedelta(days=d) for d in (0, 1, 3, 4, 7)]
    for day in days:
        for hour, minute, action in ((0, 0, "key.test"), (0, 0, "key.enable"), (0, 0, "key.test"),
                                     (12, 30, "key.enable"), (23, 59, "key.test")):  # fmt: skip
            at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
            monkeypatch.setattr(timezone, "now", lambda at=at: at)
            record(tenant=acme.tenant, actor=Actor.system("tests"), action=action)
    monkeypatch.undo()
    mine = AuditEvent.objects.filter(tenant=acme.tenant, action__in=["key.enable", "key.test"])

    def expected(start: date | None, end: date | None, action: str = "") -> list[int]:
        return [
            e.seq
            for e in mine.order_by("-seq")
            if (start is None or e.time.date() >= start)
            and (end is None or e.time.date() <= end)
            and (not action or e.action == action)
        ]

    one = timedelta(days=1)
    empty = days[1] + one  # a day with no events between two that have some
    ranges = [(days[1], days[3]), (days[0], days[0]), (empty, empty), (empty, days[2]),
              (days[1], empty), (days[4], None), (None, days[0]), (days[4] + one, None),
              (None, days[0] - one), (days[3], days[1])]  # fmt: skip
    for start, end in ranges:
        for action in ("", "key.enable"):
            filters = AuditFilters(action=action, date_from=start, date_to=end)
            with CaptureQueriesContext(connection) as run:
                page = audit_page(audit_events_for_tenant(acme.tenant, filters), before=None,
                                  size=100)  # fmt: skip
            got = [e.seq for e in page.events if e.action in ("key.enable", "key.test")]
            assert got == expected(start, end, action), (start, end, action)
            assert len(run) == 1, (start, end)
    assert len(expected(days[1], days[3])) == 15  # three days of five


def test_csv_export_streams_every_matching_event_and_is_audited(trail) -> None:
    response = login(trail.auditor).get(
        reverse("audit:export_csv", args=["acme"]), {"outcome": "failure"}
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="keyward-audit-acme-')
    text = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    table = list(csv.DictReader(io.StringIO(text)))
    assert table and all(row["outcome"] == "failure" for row in table)
    assert all(row["target"].startswith("'=") for row in table)  # formulas neutralised
    assert [int(r["seq"]) for r in table] == sorted(int(r["seq"]) for r in table)
    export = AuditEvent.objects.filter(tenant=trail.tenant, action="audit.export").get()
    assert export.actor_display == f"{trail.auditor.username} (Auditor)"
    assert export.details == {"outcome": "failure"}


def test_jsonl_export_carries_the_hashes(trail) -> None:
    response = login(trail.owner).get(reverse("audit:export_jsonl", args=["acme"]))
    lines = b"".join(response.streaming_content).decode().splitlines()  # type: ignore[attr-defined]
    docs = [json.loads(line) for line in lines]
    assert len(docs) >= 30
    for earlier, later in itertools.pairwise(docs):
        assert later["prev_hash"] == earlier["hash"]


def test_roles_that_may_not_export(trail, support) -> None:
    for user in (trail.viewer, support):
        client = login(user)
        for name in ("audit:export_csv", "audit:export_jsonl"):
            response = client.get(reverse(name, args=["acme"]))
            assert response.status_code == 403
            assert "console/403.html" in [t.name for t in response.templates]


@pytest.mark.parametrize("role", ["owner", "key_admin", "auditor", "viewer", "support"])
def test_the_page_offers_the_exports_exactly_to_who_may_download_them(trail, support, role) -> None:
    """Reading the trail and exporting it are one permission; the page shows what the role has."""
    client = login(support if role == "support" else getattr(trail, role))
    page = client.get(reverse("audit:list", args=["acme"]))
    exports = {}
    for name in ("audit:export_csv", "audit:export_jsonl"):
        response = client.get(reverse(name, args=["acme"]))
        if response.status_code == 200:
            b"".join(response.streaming_content)  # type: ignore[attr-defined]
        exports[reverse(name, args=["acme"])] = response.status_code
    body = page.content.decode()
    offered = page.status_code == 200 and all(f'href="{url}?' in body for url in exports)
    downloadable = set(exports.values()) == {200}
    assert offered == downloadable
    assert downloadable == (role in ("owner", "key_admin", "auditor"))
    if not downloadable:
        # No trail to read: the console's 403 page, and no export either.
        assert page.status_code == 403
        assert "console/403.html" in [t.name for t in page.templates]
        assert "Export" not in body
        assert set(exports.values()) == {403}
