"""The tenant console's pages at scale: Keys, Data and the Overview, on PostgreSQL.

Needs PostgreSQL (DATABASE_URL); run by `make bench` from the repository root.
One tenant holds 1,000 data keys under 50 KEK versions, 1,000,000 records
(their sealed fields under the newest data keys, as after a few rotations
whose re-encryption has not run) and 100,000 objects in two storage
locations. The first run loads them with COPY; later runs on the same
database reuse them. Each page is requested through django.test.Client as the
tenant's owner (sessions, middleware, the view, its queries, the template):
5 warm-up requests, then 60 timed ones; median and p95 (nearest rank).

The baseline, measured in the same run through the same client and
middleware: a bare signed-in Django page that reads the tenant by its slug
and renders a small template (bench/pages_urls.py).

Also printed: the SQL queries each page runs, so that a count scan or an N+1
would show here as well as in the tests; the median CPU time this process
spent per request (`*_cpu_p50_ms`: client, middleware, view and template,
the database aside), which a loaded machine inflates far less than the wall
clock; and the load average when the timing starts.

Sizes shrink for a quick look: BENCH_PAGES_RECORDS, BENCH_PAGES_OBJECTS,
BENCH_PAGES_DEKS, BENCH_PAGES_KEKS.
"""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

RECORDS = int(os.environ.get("BENCH_PAGES_RECORDS", "1000000"))
OBJECTS = int(os.environ.get("BENCH_PAGES_OBJECTS", "100000"))
DEKS = int(os.environ.get("BENCH_PAGES_DEKS", "1000"))
KEKS = int(os.environ.get("BENCH_PAGES_KEKS", "50"))
SLUG = f"bench-pages-{RECORDS}-{OBJECTS}-{DEKS}-{KEKS}"
OWNER = f"owner@{SLUG}.example"
WARMUP = 5
RUNS = 60
TARGET_P95_MS = 150.0
SEED = 20_261_203
# The newest data keys hold the data: the active one most of it, then the
# ones a re-encryption has still to empty.
DATA_DEKS = 20
COPY_ROWS = 100_000


class BenchError(Exception):
    """The benchmark cannot produce honest numbers."""


def setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    # One log line per request would drown the figures.
    logging.getLogger("keyward.request").setLevel(logging.WARNING)


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _copy(table: str, columns: list[str], rows: Callable[[], Any]) -> None:
    """COPY the rows into `table`, in pieces of COPY_ROWS."""
    from django.db import connection

    with connection.cursor() as cursor:
        raw = cursor.cursor
        buffer: list[tuple[Any, ...]] = []

        def flush() -> None:
            with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in buffer:
                    copy.write_row(row)
            buffer.clear()

        for row in rows():
            buffer.append(row)
            if len(buffer) >= COPY_ROWS:
                flush()
        if buffer:
            flush()


def load(now: datetime) -> tuple[Any, float]:
    """Make the tenant, its keys and its data; return the tenant and the seconds it took."""
    from django.db import connection, transaction

    from audit.services import Actor
    from keys.models import DataKey, DekState, KekState, KekVersion, KeySource
    from objects.models import StoredObject
    from records.models import Record, SealedFields
    from tenants.models import Role
    from tenants.services import membership_add, tenant_create, tenant_set_second_factor_requirement

    rng = random.Random(SEED)
    started = time.perf_counter()
    system = Actor.system("bench")
    with transaction.atomic():
        tenant = tenant_create(name="Bench pages", slug=SLUG, actor=system)
        tenant = tenant_set_second_factor_requirement(tenant=tenant, required=False, actor=system)
        from django.contrib.auth import get_user_model

        owner, _ = get_user_model()._default_manager.get_or_create(
            username=OWNER, defaults={"email": OWNER}
        )
        membership_add(tenant=tenant, user=owner, role=Role.OWNER, actor=system)
        source = KeySource.objects.get(tenant=tenant)
        first = KekVersion.objects.get(source=source)
        versions = [first]
        for n in range(1, KEKS):
            versions.append(
                KekVersion.objects.create(
                    source=source, provider_version=f"bench-v{n}", state=KekState.RETIRED
                )
            )
        # The newest KEK version is the active one.
        KekVersion.objects.filter(source=source).exclude(pk=versions[-1].pk).update(
            state=KekState.RETIRED
        )
        KekVersion.objects.filter(pk=versions[-1].pk).update(state=KekState.ACTIVE)
        DataKey.objects.filter(tenant=tenant).update(state=DekState.RETIRED, retired_at=now)
        deks = [
            DataKey(
                tenant=tenant,
                version=v,
                wrapped=rng.randbytes(60),
                kek_version=versions[min(KEKS - 1, (v - 1) * KEKS // DEKS)],
                state=DekState.RETIRING if v > DEKS - DATA_DEKS else DekState.RETIRED,
            )
            for v in range(2, DEKS + 1)
        ]
        DataKey.objects.bulk_create(deks, batch_size=1000)
        active = deks[-1] if deks else DataKey.objects.get(tenant=tenant)
        DataKey.objects.filter(pk=active.pk).update(state=DekState.ACTIVE, retired_at=None)
        holders = [d.pk for d in deks[-DATA_DEKS:]] or [active.pk]

        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(max(id), 0) FROM archive_record")
            base = int(cursor.fetchone()[0])
        record_table, sealed_table = Record._meta.db_table, SealedFields._meta.db_table

        def dek_for(i: int) -> int:
            # Four records in five under the active key, the rest spread out.
            return active.pk if i % 5 else holders[i // 5 % len(holders)]

        _copy(
            record_table,
            ["id", "uid", "tenant_id", "kind", "external_id", "created"],
            lambda: (
                (
                    base + i,
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    tenant.pk,
                    "device" if i % 3 else "user",
                    f"bench-{i}",
                    now,
                )
                for i in range(1, RECORDS + 1)
            ),
        )
        pii = rng.randbytes(120)
        _copy(
            sealed_table,
            ["record_id", "dek_id", "pii"],
            lambda: ((base + i, dek_for(i), pii) for i in range(1, RECORDS + 1)),
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                [record_table, base + RECORDS + 1],
            )
        _copy(
            StoredObject._meta.db_table,
            [
                "id",
                "tenant_id",
                "key",
                "location",
                "size",
                "ciphertext_size",
                "sha256",
                "version",
                "dek_id",
                "content_type",
                "created",
                "updated",
            ],
            lambda: (
                (
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    tenant.pk,
                    f"exports/{i // 1000}/{i}.csv",
                    "dedicated" if i % 10 < 3 else "shared",
                    size,
                    size + 64,
                    "0" * 64,
                    f"{i:016x}",
                    dek_for(i),
                    "text/csv",
                    now,
                    now,
                )
                for i in range(OBJECTS)
                for size in (rng.randint(100, 10_000_000),)
            ),
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return tenant, time.perf_counter() - started


def prepare() -> tuple[Any, Any]:
    from django.contrib.auth import get_user_model

    from tenants.models import Tenant

    tenant = Tenant.objects.filter(slug=SLUG).first()
    if tenant is not None:
        print(f"# reused the {SLUG} tenant (no load)")
    else:
        tenant, seconds = load(datetime.now(UTC))
        print(
            f"# loaded {DEKS:,} data keys, {KEKS} KEK versions, {RECORDS:,} records and "
            f"{OBJECTS:,} objects in {seconds:.1f} s"
        )
    return tenant, get_user_model()._default_manager.get(username=OWNER)


def timed(run: Callable[[], None]) -> tuple[list[float], list[float]]:
    """Wall-clock milliseconds per request, and this process's CPU milliseconds (the
    client, the middleware, the view and the template: everything but the database)."""
    timings: list[float] = []
    cpu: list[float] = []
    for i in range(WARMUP + RUNS):
        started, used = time.perf_counter(), time.process_time()
        run()
        elapsed = (time.perf_counter() - started) * 1000.0
        if i >= WARMUP:
            timings.append(elapsed)
            cpu.append((time.process_time() - used) * 1000.0)
    return timings, cpu


def main() -> int:
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.urls import reverse

    from bench.clients import signed_in_client

    if connection.vendor != "postgresql":
        print(
            f"bench_pages: needs PostgreSQL, but DATABASE_URL gives {connection.vendor} "
            f"({settings.DATABASES['default']['NAME']}); set DATABASE_URL=postgres://...",
            file=sys.stderr,
        )
        return 2
    call_command("migrate", verbosity=0, interactive=False)
    worst = 0.0
    try:
        tenant, owner = prepare()
        with override_settings(ROOT_URLCONF="bench.pages_urls"):
            client = signed_in_client(owner)
            pages = {
                "keys_page": reverse("keys:overview", args=[tenant.slug]),
                "data_page": reverse("data:overview", args=[tenant.slug]),
                "overview_page": reverse("console:dashboard", args=[tenant.slug]),
                "bare_page": reverse("bench_bare_page", args=[tenant.slug]),
            }
            print(f"# {WARMUP} warm-up + {RUNS} timed requests per page, signed in as the owner")
            results: dict[str, tuple[float, float]] = {}
            cpu_p50: dict[str, float] = {}
            load = os.getloadavg()[0]
            print(f"# load average at the start: {load:.2f} on {os.cpu_count()} CPUs")
            for name, url in pages.items():

                def get(name: str = name, url: str = url) -> None:
                    response = client.get(url)
                    if response.status_code != 200:
                        raise BenchError(f"{name}: status {response.status_code}")

                with CaptureQueriesContext(connection) as queries:
                    get()
                print(f"# {name}: {len(queries)} SQL queries per view")
                timings, cpu = timed(get)
                results[name] = (statistics.median(timings), percentile(timings, 0.95))
                cpu_p50[name] = statistics.median(cpu)
        base_p50, base_p95 = results.pop("bare_page")
        for name, (p50, p95) in results.items():
            worst = max(worst, p95)
            print(f"BENCH {name}_p50_ms {p50:.1f} ms", flush=True)
            print(f"BENCH {name}_p95_ms {p95:.1f} ms", flush=True)
            print(f"BENCH {name}_cpu_p50_ms {cpu_p50[name]:.1f} ms", flush=True)
        print(f"BENCH pages_baseline_bare_p50_ms {base_p50:.1f} ms")
        print(f"BENCH pages_baseline_bare_p95_ms {base_p95:.1f} ms")
        print(f"BENCH pages_baseline_bare_cpu_p50_ms {cpu_p50['bare_page']:.1f} ms")
    except BenchError as exc:
        print(f"bench_pages: {exc}", file=sys.stderr)
        return 1
    verdict = "met" if worst < TARGET_P95_MS else "MISSED"
    print(f"# target p95 < {TARGET_P95_MS:.0f} ms on every page: {verdict} (worst {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
