"""The support console's tenant list with 10,000 tenants on PostgreSQL.

Needs PostgreSQL (DATABASE_URL); run by `make bench` from the repository root.
The first run loads the tenants (bulk inserts: states, key sources, health
check findings, key versions, object moves, audit chains of hash-chained
events, and records and objects for some tenants); later runs on the same
database reuse them. Three pages are requested through django.test.Client
(middleware, view, one query, template), 5 warm-up requests then 60 timed
ones: the first page, a filtered page (needs attention, AWS KMS keys) and a
page deep in the list (reached by following its keyset cursors). The
baseline is a bare `SELECT` of 50 tenants in the same run.

`BENCH_SUPPORT_TENANTS` shrinks the data set for a quick look (default 10000).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PREFIX = "bench-support-"
TENANTS = int(os.environ.get("BENCH_SUPPORT_TENANTS", "10000"))
SUPPORT_USER = "support@bench-support.example"
WARMUP = 5
RUNS = 60
TARGET_P95_MS = 150.0
SEED = 20_261_203
EVENTS_PER_TENANT = 6
# Every 100th tenant holds data: 2,000 records and 200 objects.
DATA_EVERY = 100
RECORDS_EACH = 2_000
OBJECTS_EACH = 200
BATCH = 5_000

# state: share (%), of the tenants
STATES: tuple[tuple[str, float], ...] = (
    ("vendor_managed", 84.0),
    ("byok_active", 11.0),
    ("degraded", 2.0),
    ("rotation_pending", 1.5),
    ("revoked", 1.0),
    ("migrating", 0.5),
)
OWN_KINDS = ("aws_kms", "azure_keyvault", "kmip", "uploaded")
RESULTS = ("ok", "ok", "ok", "degraded", "error")


class BenchError(Exception):
    """The benchmark cannot produce honest numbers."""


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    # One log line per request would drown the figures.
    logging.getLogger("keyward.request").setLevel(logging.WARNING)


def _pick_state(rng: random.Random) -> str:
    roll = rng.uniform(0, 100)
    for state, share in STATES:
        roll -= share
        if roll <= 0:
            return state
    return STATES[0][0]


def _config(kind: str, i: int) -> dict[str, str]:
    return {
        "aws_kms": {"key_arn": f"arn:aws:kms:eu-west-1:111122223333:key/{uuid.UUID(int=i)}"},
        "azure_keyvault": {"vault_url": f"https://t{i}.vault.azure.net", "key_name": "kek"},
        "kmip": {"host": f"kmip{i}.example.net", "port": "5696"},
        "uploaded": {},
        "local": {},
    }[kind]


def load(now: datetime) -> float:
    """Insert the data set in batches; return the seconds it took."""
    from django.db import transaction

    from audit.chain import GENESIS_HASH, event_hash
    from audit.models import AuditChain, AuditEvent
    from keys.models import DataKey, KekVersion, KeyHealthCheck, KeySource
    from objects.models import ObjectMigration, StoredObject
    from records.models import Record, SealedFields
    from tenants.models import Tenant

    rng = random.Random(SEED)
    started = time.perf_counter()
    with transaction.atomic():
        tenants = []
        for i in range(TENANTS):
            state = _pick_state(rng)
            tenants.append(
                Tenant(
                    name=f"Bench Tenant {i:05d}",
                    slug=f"{PREFIX}{i:05d}",
                    state=state,
                    byok_addon=state != "vendor_managed" or rng.random() < 0.2,
                )
            )
        Tenant.objects.bulk_create(tenants, batch_size=BATCH)
        # auto_now_add ignores given values: spread the state times afterwards.
        for tenant in tenants:
            tenant.state_changed_at = now - timedelta(minutes=rng.randint(1, 60 * 24 * 90))
        Tenant.objects.bulk_update(tenants, ["state_changed_at"], batch_size=BATCH)

        sources, versions, checks, moves, chains, events = [], [], [], [], [], []
        for i, tenant in enumerate(tenants):
            own = tenant.state != "vendor_managed"
            kind = OWN_KINDS[i % len(OWN_KINDS)] if own else "local"
            source = KeySource(tenant=tenant, kind=kind, state="active", config=_config(kind, i))
            sources.append(source)
            versions.append(
                KekVersion(
                    source=source,
                    provider_version=f"v-{i}",
                    state="active",
                    material_expires_at=(now + timedelta(days=rng.randint(5, 400)))
                    if kind == "uploaded"
                    else None,
                )
            )
            if own:
                at = now - timedelta(days=30)
                for _ in range(5):
                    first = at
                    at += timedelta(days=rng.randint(1, 5))
                    checks.append(
                        KeyHealthCheck(
                            tenant=tenant,
                            source=source,
                            result=rng.choice(RESULTS),
                            message="",
                            first_at=first,
                            last_at=at,
                            runs=rng.randint(1, 5000),
                        )
                    )
            previous = GENESIS_HASH
            time_at = now - timedelta(days=60)
            for seq in range(1, EVENTS_PER_TENANT + 1):
                time_at += timedelta(hours=rng.randint(1, 200))
                values: dict[str, Any] = {
                    "chain": str(tenant.pk),
                    "seq": seq,
                    "tenant_id": tenant.pk,
                    "time": time_at,
                    "actor_kind": "system",
                    "actor_id": "",
                    "actor_display": "bench",
                    "action": rng.choice(["key.degraded", "key.recovered", "dek.rotate"]),
                    "target": "",
                    "outcome": "success",
                    "reason": "",
                    "ip": None,
                    "user_agent": "",
                    "request_id": "",
                    "details": {},
                }
                digest = event_hash(values, previous)
                events.append(AuditEvent(prev_hash=previous, hash=digest, **values))
                previous = digest
            chains.append(
                AuditChain(
                    key=str(tenant.pk),
                    last_seq=EVENTS_PER_TENANT,
                    last_hash=previous,
                    last_time=time_at,
                )
            )
        KeySource.objects.bulk_create(sources, batch_size=BATCH)
        KekVersion.objects.bulk_create(versions, batch_size=BATCH)
        KeyHealthCheck.objects.bulk_create(checks, batch_size=BATCH)
        AuditChain.objects.bulk_create(chains, batch_size=BATCH)
        AuditEvent.objects.bulk_create(events, batch_size=BATCH)

        deks = {
            tenant.pk: DataKey(
                tenant=tenant, version=1, wrapped=b"\0" * 60, kek_version=versions[i]
            )
            for i, tenant in enumerate(tenants)
            if i % DATA_EVERY == 0 or tenant.state == "migrating"
        }
        DataKey.objects.bulk_create(deks.values(), batch_size=BATCH)
        for tenant in tenants:
            if tenant.state == "migrating":
                moves.append(
                    ObjectMigration(
                        tenant=tenant,
                        direction="to_dedicated",
                        state=rng.choice(["failed", "copying"]),
                        source_location="shared",
                        target_location="dedicated",
                        target_dek=deks[tenant.pk],
                    )
                )
        ObjectMigration.objects.bulk_create(moves, batch_size=BATCH)
        records, objects = [], []

        def store_records(rows: list[Any]) -> None:
            # Each record with its sealed fields, as the API writes them: the
            # database's counters (DekRecordCount) count sealed rows.
            created = Record.objects.bulk_create(rows, batch_size=BATCH)
            SealedFields.objects.bulk_create(
                [SealedFields(record=r, dek=deks[r.tenant_id], pii=b"\x02sealed") for r in created],
                batch_size=BATCH,
            )

        for i, tenant in enumerate(tenants):
            if i % DATA_EVERY:
                continue
            records += [
                Record(tenant=tenant, kind="device", external_id=f"d-{n}")
                for n in range(RECORDS_EACH)
            ]
            objects += [
                StoredObject(
                    tenant=tenant,
                    key=f"exports/{n}.csv",
                    location="shared",
                    size=1,
                    ciphertext_size=1,
                    sha256="0" * 64,
                    dek=deks[tenant.pk],
                )
                for n in range(OBJECTS_EACH)
            ]
            if len(records) >= 50_000:
                store_records(records)
                records = []
        store_records(records)
        StoredObject.objects.bulk_create(objects, batch_size=BATCH)
    return time.perf_counter() - started


def prepare() -> Any:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from tenants.models import Tenant

    present = Tenant.objects.filter(slug__startswith=PREFIX).count()
    if present == TENANTS:
        print(f"# reused {TENANTS:,} tenants (no load)")
    elif present:
        raise BenchError(
            f"{present:,} {PREFIX}* tenants exist, {TENANTS:,} wanted: use another database "
            "or the same BENCH_SUPPORT_TENANTS"
        )
    else:
        seconds = load(datetime.now(UTC))
        print(f"# loaded {TENANTS:,} tenants with their keys, checks and events in {seconds:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    user, _ = get_user_model()._default_manager.get_or_create(
        username=SUPPORT_USER, defaults={"email": SUPPORT_USER, "is_staff": True}
    )
    return user


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def timed(run: Callable[[], None]) -> list[float]:
    timings: list[float] = []
    for i in range(WARMUP + RUNS):
        started = time.perf_counter()
        run()
        elapsed = (time.perf_counter() - started) * 1000.0
        if i >= WARMUP:
            timings.append(elapsed)
    return timings


@dataclass(frozen=True)
class Scenario:
    name: str
    query: dict[str, str]


def deep_cursor(pages: int) -> str:
    """The cursor of page `pages + 1` by name, found by walking the list (not timed)."""
    from console.support.selectors import Listing, support_tenant_page

    after: str | None = None
    for _ in range(pages):
        page = support_tenant_page(Listing(), after)
        if page.next_cursor is None:
            break
        after = page.next_cursor
    if after is None:
        raise BenchError("the list has a single page: nothing deep to measure")
    return after


def data_tables_read() -> list[str]:
    """The tenants' data tables the first page's plan reads (EXPLAIN ANALYZE): none,
    since its counts come from the counters the database keeps."""
    from django.db import connection

    from console.support.selectors import Listing, _with_counts, support_tenants

    query = _with_counts(support_tenants(Listing()).order_by("sort_value", "pk"))[:51]
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    data = ("archive_record", "archive_sealedfields", "objects_storedobject")
    return sorted({table for table in data if re.search(rf"\b{table}\b", plan)})


def main() -> int:
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.urls import reverse

    from bench.clients import signed_in_client

    if connection.vendor != "postgresql":
        print(
            f"bench_support: needs PostgreSQL, but DATABASE_URL gives {connection.vendor} "
            f"({settings.DATABASES['default']['NAME']}); set DATABASE_URL=postgres://...",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0, interactive=False)
    try:
        user = prepare()
        client = signed_in_client(user)
        url = reverse("support:list")
        deep_pages = max(1, min(TENANTS // 50 - 2, 180))
        scenarios = [
            Scenario("first", {}),
            Scenario("filtered", {"attention": "on", "source": "aws_kms", "sort": "since"}),
            Scenario("deep", {"after": deep_cursor(deep_pages)}),
        ]
        print(f"# {WARMUP} warm-up + {RUNS} timed requests each, 50 tenants a page")
        print(f"# deep page: page {deep_pages + 1} by name")
        scanned = data_tables_read()
        print(f"# data tables read per page view: {', '.join(scanned) or 'none'}")
        if scanned:
            raise BenchError(f"the tenant list reads the tenants' data: {', '.join(scanned)}")
        worst = 0.0
        for scenario in scenarios:

            def get(scenario: Scenario = scenario) -> None:
                response = client.get(url, scenario.query)
                if response.status_code != 200:
                    raise BenchError(f"{scenario.name}: status {response.status_code}")
                if scenario.name != "filtered" and response.content.count(b"support-row") < 50:
                    raise BenchError(f"{scenario.name}: fewer than 50 rows")

            timings = timed(get)
            p50, p95 = statistics.median(timings), percentile(timings, 0.95)
            worst = max(worst, p95)
            print(f"BENCH support_console_{scenario.name}_p50 {p50:.1f} ms", flush=True)
            print(f"BENCH support_console_{scenario.name}_p95 {p95:.1f} ms", flush=True)

        def bare() -> None:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id, name, slug, state, state_changed_at FROM tenants_tenant "
                    "ORDER BY name, id LIMIT 50"
                )
                cursor.fetchall()

        baseline = timed(bare)
        print(f"BENCH support_console_p95_ms {worst:.1f} ms", flush=True)
        print(f"BENCH support_baseline_select50_p50 {statistics.median(baseline):.2f} ms")
        print(f"BENCH support_baseline_select50_p95 {percentile(baseline, 0.95):.2f} ms")
    except BenchError as exc:
        print(f"bench_support: {exc}", file=sys.stderr)
        return 1
    verdict = "met" if worst < TARGET_P95_MS else "MISSED"
    print(f"# target p95 < {TARGET_P95_MS:.0f} ms: {verdict} (worst {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
