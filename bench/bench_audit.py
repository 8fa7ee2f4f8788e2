"""The audit viewer against one tenant with 1,000,000 hash-chained events.

Needs PostgreSQL (DATABASE_URL) and, like every benchmark, is run by `make bench`
from the repository root. The first run loads the chain with COPY; later runs on
the same database reuse it. Each scenario requests the viewer page through
django.test.Client (middleware, view, selector, template), 5 warm-up requests
then 60 timed ones, and prints the median and the 95th percentile.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.test import Client

    from tenants.models import Tenant

ROOT = Path(__file__).resolve().parent.parent

SLUG = "bench-audit"
EVENTS = 1_000_000  # in the tenant's chain: COPY loads all but the last, which is
# the auditor's membership.add, written by the service like any other event
AUDITOR = "auditor@bench-audit.example"
WARMUP = 5
RUNS = 60
DEEP_BEFORE = 10_000  # ~990,000 events back from the newest
RARE_ACTION = "key.enable"
FILTER_ACTOR = "bob@bench-audit.example"
FILTER_OUTCOME = "failure"
SEED = 20_240_601
SPAN = timedelta(days=365)
VERIFY_WINDOW = 2_000  # events re-hashed from the database at each end of the chain

# The hashed fields, in the chain's own order (audit.chain is framework-free).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from audit.chain import HASHED_FIELDS  # noqa: E402
from bench.summary import bound  # noqa: E402

TARGET_P95_MS = bound("audit_*_p95")

COLUMNS = ("id", *HASHED_FIELDS, "prev_hash", "hash")

# action: share of all events (%), failure (%), denied (%)
ACTIONS: tuple[tuple[str, float, float, float], ...] = (
    ("auth.login", 36.0, 6.0, 0.0),
    ("auth.logout", 19.0, 0.0, 0.0),
    ("auth.sudo", 6.0, 5.0, 0.0),
    ("key.test", 18.0, 4.0, 1.0),
    ("archive.read", 9.0, 0.5, 1.0),
    ("key.rotate", 3.0, 2.0, 2.0),
    ("membership.add", 2.0, 0.0, 4.0),
    ("audit.export", 1.6, 0.0, 6.0),
    ("membership.change_role", 1.2, 0.0, 5.0),
    (RARE_ACTION, 1.0, 1.0, 3.0),
    ("key.disable", 0.9, 1.0, 3.0),
    ("membership.remove", 0.6, 0.0, 5.0),
    ("auth.lockout", 0.3, 0.0, 100.0),
)
# (email, user id, share)
USERS: tuple[tuple[str, str, float], ...] = (
    ("alice@bench-audit.example", "1001", 30.0),
    (FILTER_ACTOR, "1002", 22.0),
    ("carol@bench-audit.example", "1003", 18.0),
    ("dave@bench-audit.example", "1004", 14.0),
    ("erin@bench-audit.example", "1005", 10.0),
    ("frank@bench-audit.example", "1006", 6.0),
)
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "keyward-cli/1.4 python-httpx/0.27",
)
FAILURE_REASONS = {
    "auth.login": "wrong email or password, or sign-in locked",
    "auth.sudo": "wrong password",
    "key.test": "key store unreachable: timed out after 5 s",
    "key.rotate": "key store refused: key version not enabled",
    "archive.read": "data key unavailable",
    RARE_ACTION: "key store refused: access denied by key policy",
    "key.disable": "key store unreachable: timed out after 5 s",
}
DENIED_REASON = "missing permission"
ROLES = ("owner", "key_admin", "auditor", "viewer")
SYSTEM_SHARE = {"key.test": 0.4, "key.rotate": 0.5, "archive.read": 0.3}


class BenchError(Exception):
    """The benchmark cannot produce honest numbers."""


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    # One log line per request would drown the figures.
    logging.getLogger("keyward.request").setLevel(logging.WARNING)


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return [c / total for c in out]


def generate_rows(
    tenant: Tenant, count: int, end: datetime, heads: list[tuple[int, str]]
) -> Iterator[tuple[Any, ...]]:
    """Rows for COPY: seq 1..count of the tenant's chain, hashed as `record` hashes them.

    The (seq, hash) of the last row is appended to `heads` once all are yielded.
    """
    from audit.chain import GENESIS_HASH, event_hash
    from audit.services import chain_key

    rng = random.Random(SEED)
    key = chain_key(tenant)
    tenant_id = tenant.pk
    tenant_id_text = str(tenant_id)
    start = end - SPAN
    gap_us = int(SPAN.total_seconds() * 1_000_000) // count
    action_cum = _cumulative([a[1] for a in ACTIONS])
    user_cum = _cumulative([u[2] for u in USERS])
    ips = [f"203.0.113.{n}" for n in range(10, 40)] + [f"198.51.100.{n}" for n in range(1, 20)]
    empty = "{}"
    prev_hash = GENESIS_HASH
    for seq in range(1, count + 1):
        when = start + timedelta(microseconds=(seq - 1) * gap_us + rng.randrange(gap_us))
        if seq == 1:
            action, fail, deny = "tenant.create", 0.0, 0.0
        else:
            action, _, fail, deny = ACTIONS[bisect.bisect(action_cum, rng.random())]
        roll = rng.random() * 100.0
        outcome = "failure" if roll < fail else "denied" if roll < fail + deny else "success"
        reason = ""
        if outcome == "failure":
            reason = FAILURE_REASONS.get(action, "internal error")
        elif outcome == "denied":
            reason = DENIED_REASON if action != "auth.lockout" else "too many failed sign-ins"
        details: dict[str, Any] = {}
        target = ""
        if seq == 1 or rng.random() < SYSTEM_SHARE.get(action, 0.0):
            actor_kind, actor_id, display = "system", "", "keyward"
            ip, agent, request_id = None, "", ""
            target = SLUG if seq == 1 else ""
        else:
            email, actor_id, _ = USERS[bisect.bisect(user_cum, rng.random())]
            actor_kind, display = "user", email
            ip = ips[rng.randrange(len(ips))]
            agent = USER_AGENTS[rng.randrange(len(USER_AGENTS))]
            request_id = f"{rng.getrandbits(128):032x}"
        if action.startswith("key."):
            target = "arn:aws:kms:eu-west-1:111122223333:key/bench-" + ("a" if seq % 7 else "b")
        elif action.startswith("membership."):
            target = USERS[rng.randrange(len(USERS))][0]
            if action == "membership.add":
                details = {"role": ROLES[rng.randrange(len(ROLES))]}
            elif action == "membership.change_role":
                old, new = rng.sample(ROLES, 2)
                details = {"from": old, "to": new}
        elif action == "audit.export":
            target = "csv" if rng.random() < 0.7 else "jsonl"
            if rng.random() < 0.5:
                details = {"action": "key.test"}
        elif action == "archive.read":
            target = f"doc-{rng.randrange(100_000)}"
        values: dict[str, Any] = {
            "chain": key,
            "seq": seq,
            "tenant_id": tenant_id,
            "time": when,
            "actor_kind": actor_kind,
            "actor_id": actor_id,
            "actor_display": display,
            "action": action,
            "target": target[:254],
            "outcome": outcome,
            "reason": reason,
            "details": details,
            "ip": ip,
            "user_agent": agent,
            "request_id": request_id,
        }
        digest = event_hash(values, prev_hash)
        yield (
            uuid.uuid4(),
            key,
            seq,
            tenant_id_text,
            when,
            actor_kind,
            actor_id,
            display,
            action,
            target[:254],
            outcome,
            reason,
            ip,
            agent,
            request_id,
            json.dumps(details, separators=(",", ":")) if details else empty,
            prev_hash,
            digest,
        )
        prev_hash = digest
    heads.append((count, prev_hash))


def load_chain() -> float:
    """Create the tenant and COPY all but its last event; return the seconds it took."""
    from django.db import connection, transaction

    from audit.models import AuditChain
    from audit.services import chain_key
    from tenants.models import Tenant

    started = time.perf_counter()
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    heads: list[tuple[int, str]] = []
    with transaction.atomic():
        tenant = Tenant.objects.create(name="Bench Audit", slug=SLUG)
        sql = f"COPY audit_auditevent ({', '.join(COLUMNS)}) FROM STDIN"
        with connection.cursor() as cursor, cursor.copy(sql) as copy:
            for row in generate_rows(tenant, EVENTS - 1, end, heads):
                copy.write_row(row)
        last_seq, last_hash = heads[0]
        AuditChain.objects.create(
            key=chain_key(tenant), last_seq=last_seq, last_hash=last_hash, last_time=end
        )
    return time.perf_counter() - started


def ensure_auditor(tenant: Tenant) -> User:
    from django.contrib.auth import get_user_model

    from audit.services import Actor
    from tenants.models import Membership, Role
    from tenants.services import membership_add

    user_model = get_user_model()
    user = user_model._default_manager.filter(username=AUDITOR).first()
    if user is None:
        user = user_model._default_manager.create_user(
            username=AUDITOR, email=AUDITOR, password=None
        )
    if not Membership.objects.filter(tenant=tenant, user_id=user.pk).exists():
        membership_add(tenant=tenant, user=user, role=Role.AUDITOR, actor=Actor.system())
    return user


def head_seq(tenant: Tenant) -> int:
    from audit.models import AuditChain
    from audit.services import chain_key

    head = AuditChain.objects.filter(key=chain_key(tenant)).first()
    return head.last_seq if head is not None else 0


def prepare() -> tuple[Tenant, User]:
    """The tenant with exactly EVENTS events and its auditor, loading them if needed."""
    from django.db import connection

    from audit.models import AuditEvent
    from audit.services import chain_key
    from tenants.models import Tenant

    tenant = Tenant.objects.filter(slug=SLUG).first()
    if tenant is None:
        seconds = load_chain()
        print(f"# loaded {EVENTS - 1:,} events with COPY (hash chain included) in {seconds:.1f} s")
        tenant = Tenant.objects.get(slug=SLUG)
        loaded = True
    else:
        loaded = False
    if head_seq(tenant) not in (EVENTS - 1, EVENTS):
        raise BenchError(
            f"tenant {SLUG!r} exists with {head_seq(tenant):,} events, not {EVENTS:,}: "
            "run against a fresh, empty database"
        )
    user = ensure_auditor(tenant)  # its membership.add is event #EVENTS
    stored = AuditEvent.objects.filter(chain=chain_key(tenant)).count()
    if head_seq(tenant) != EVENTS or stored != EVENTS:
        raise BenchError(f"the chain has {stored:,} events (head #{head_seq(tenant):,})")
    if not loaded:
        print(f"# reused tenant {SLUG!r} with {EVENTS:,} events (no load)")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # VACUUM as autovacuum would have long since done on a year-old table (and so
        # that it does not start in the middle of the timings), ANALYZE for the planner.
        cursor.execute("VACUUM (ANALYZE) audit_auditevent")
        cursor.execute("ANALYZE")
    print(f"# VACUUM (ANALYZE) and ANALYZE in {time.perf_counter() - started:.1f} s")
    verify_ends(tenant)
    return tenant, user


def verify_ends(tenant: Tenant) -> None:
    """Re-hash the first and last events as stored: the COPY round trip kept the chain."""
    from audit.chain import GENESIS_HASH, HASHED_FIELDS, event_hash
    from audit.models import AuditEvent
    from audit.services import chain_key

    events = AuditEvent.objects.filter(chain=chain_key(tenant)).order_by("seq")
    for window, prev_hash in (
        (events.filter(seq__lte=VERIFY_WINDOW), GENESIS_HASH),
        (events.filter(seq__gt=EVENTS - VERIFY_WINDOW), None),
    ):
        for event in window:
            values = {name: getattr(event, name) for name in HASHED_FIELDS}
            if prev_hash is not None and event.prev_hash != prev_hash:
                raise BenchError(f"event #{event.seq}: prev_hash does not link")
            if event_hash(values, event.prev_hash) != event.hash:
                raise BenchError(f"event #{event.seq}: stored content does not match its hash")
            prev_hash = event.hash


@dataclass(frozen=True)
class Scenario:
    name: str
    query: dict[str, str]
    marker: str  # must appear once per row of the page
    first_row: str = ""  # must appear in the page, when set


def count_matching(tenant: Tenant, **filters: Any) -> int:
    from audit.models import AuditEvent
    from audit.services import chain_key

    return AuditEvent.objects.filter(chain=chain_key(tenant), **filters).count()


def scenarios(tenant: Tenant) -> list[Scenario]:
    from django.utils import timezone

    from audit.models import AuditEvent
    from audit.services import chain_key

    middle = AuditEvent.objects.get(chain=chain_key(tenant), seq=EVENTS // 2).time
    day: date = timezone.localdate(middle)
    day_start = timezone.make_aware(datetime.combine(day, datetime.min.time()))
    counts = {
        "action": count_matching(tenant, action=RARE_ACTION),
        "actor+outcome": count_matching(tenant, actor_display=FILTER_ACTOR, outcome=FILTER_OUTCOME),
        "day": count_matching(tenant, time__gte=day_start, time__lt=day_start + timedelta(days=1)),
    }
    print(
        f"# matches: action={RARE_ACTION} {counts['action']:,} "
        f"({100 * counts['action'] / EVENTS:.2f}%), actor={FILTER_ACTOR}"
        f" outcome={FILTER_OUTCOME} {counts['actor+outcome']:,}, {day} {counts['day']:,}"
    )
    return [
        Scenario("first_page", {}, 'data-testid="audit-row"', f"<td>{EVENTS}</td>"),
        Scenario(
            "deep_page",
            {"before": str(DEEP_BEFORE)},
            'data-testid="audit-row"',
            f"<td>{DEEP_BEFORE - 1}</td>",
        ),
        Scenario("filter_action", {"action": RARE_ACTION}, f"<code>{RARE_ACTION}</code>"),
        Scenario(
            "filter_actor_outcome",
            {"actor": FILTER_ACTOR, "outcome": FILTER_OUTCOME},
            f'outcome-{FILTER_OUTCOME}"',
        ),
        Scenario(
            "filter_date",
            {"date_from": day.isoformat(), "date_to": day.isoformat()},
            f'datetime="{day.isoformat()}T',
        ),
    ]


def check(scenario: Scenario, status: int, body: str, page_size: int) -> None:
    """A page that is fast because it is broken or empty must not count."""
    rows = body.count('data-testid="audit-row"')
    if status != 200:
        raise BenchError(f"{scenario.name}: status {status}")
    if rows != page_size or body.count(scenario.marker) != page_size:
        raise BenchError(
            f"{scenario.name}: {rows} rows, {body.count(scenario.marker)} matching "
            f"{scenario.marker!r}; expected {page_size}"
        )
    if scenario.first_row and scenario.first_row not in body:
        raise BenchError(f"{scenario.name}: {scenario.first_row!r} is not on the page")


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# What htmx sends when the filter form is submitted or the pager followed in a
# browser: the page answers with the table alone (the `results` partial).
SWAP_HEADERS = {"HX-Request": "true", "HX-Target": "results"}


def measure(
    client: Client, url: str, scenario: Scenario, page_size: int, *, swap: bool = False
) -> list[float]:
    from urllib.parse import urlencode

    target = f"{url}?{urlencode(scenario.query)}" if scenario.query else url
    headers = SWAP_HEADERS if swap else {}
    timings: list[float] = []
    for i in range(WARMUP + RUNS):
        started = time.perf_counter()
        response = client.get(target, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000.0
        body = response.content.decode()
        check(scenario, response.status_code, body, page_size)
        if swap != (not body.lstrip().startswith("<!doctype")):
            raise BenchError(f"{scenario.name}: swap={swap} but the answer is not that")
        if i >= WARMUP:
            timings.append(elapsed)
    return timings


def main() -> int:
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.urls import reverse

    from bench.clients import signed_in_client

    if connection.vendor != "postgresql":
        print(
            f"bench_audit: needs PostgreSQL, but DATABASE_URL gives {connection.vendor} "
            f"({settings.DATABASES['default']['NAME']}); set DATABASE_URL=postgres://...",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0, interactive=False)
    try:
        tenant, user = prepare()
        page_size = int(settings.KEYWARD_AUDIT_PAGE_SIZE)
        cases = scenarios(tenant)
        client = signed_in_client(user, record_login=False)
        url = reverse("audit:list", args=[tenant.slug])
        print(f"# {WARMUP} warm-up + {RUNS} timed requests each, page size {page_size}")
        missed: list[str] = []
        # Each scenario as a whole page (a link followed, a URL opened), then, but
        # for the first page, as the swap the page's own form and pager ask for.
        runs = [(s, False) for s in cases] + [(s, True) for s in cases if s.query]
        for scenario, swap in runs:
            name = f"{scenario.name}_swap" if swap else scenario.name
            timings = measure(client, url, scenario, page_size, swap=swap)
            p50 = statistics.median(timings)
            p95 = percentile(timings, 0.95)
            print(f"BENCH audit_{name}_p50 {p50:.1f} ms", flush=True)
            print(f"BENCH audit_{name}_p95 {p95:.1f} ms", flush=True)
            if p95 >= TARGET_P95_MS:
                missed.append(f"{name} ({p95:.1f} ms)")
    except BenchError as exc:
        print(f"bench_audit: {exc}", file=sys.stderr)
        return 1
    if missed:
        print(f"# target p95 < {TARGET_P95_MS:.0f} ms: MISSED by {', '.join(missed)}")
    else:
        print(f"# target p95 < {TARGET_P95_MS:.0f} ms: met by every scenario")
    return 0


if __name__ == "__main__":
    sys.exit(main())
