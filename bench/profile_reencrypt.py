"""Where a re-encryption batch spends its CPU, step by step, on one connection.

Not a benchmark (`make bench` does not run it): a profile for when the rate
falls short. It loads PROFILE_RECORDS records (50,000) for a tenant of its own,
rotates, and re-encrypts them one batch at a time in this thread, timing each
step with the CPU of this process and of its PostgreSQL backend (read from
/proc: PostgreSQL runs on this machine), so that neighbours on a shared
machine do not blur the figures. Then cProfile over the re-sealing of one
batch, and EXPLAIN (ANALYZE, BUFFERS, WAL) of one batch's SELECT and UPDATE.

    .venv/bin/python bench/profile_reencrypt.py
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("KEYWARD_MODE", "embedded")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from audit.services import Actor  # noqa: E402
from keys.runtime import envelope  # noqa: E402
from keys.services.deks import dek_rotate  # noqa: E402
from records import reencrypt  # noqa: E402
from records.bulk import raw_cursor  # noqa: E402
from records.services import records_create  # noqa: E402
from records.synthetic import synthetic_records  # noqa: E402
from tenants.services import tenant_create  # noqa: E402

RECORDS = int(os.environ.get("PROFILE_RECORDS", "50000"))
TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def backend_cpu() -> float:
    pid = connection.connection.info.backend_pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Steps:
    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def timed(self, name: str, work: Callable[[], T]) -> T:
        wall, own, db = time.perf_counter(), time.thread_time(), backend_cpu()
        result = work()
        total = self.totals.setdefault(name, [0.0, 0.0, 0.0])
        total[0] += time.perf_counter() - wall
        total[1] += time.thread_time() - own
        total[2] += backend_cpu() - db
        return result


def main() -> None:
    call_command("migrate", verbosity=0)
    slug = f"profile-{uuid.uuid4().hex[:8]}"
    tenant = tenant_create(name="Profile", slug=slug, actor=Actor.system("bench"))
    for start in range(0, RECORDS, 10_000):
        items = list(
            synthetic_records(min(10_000, RECORDS - start), seed=start, prefix=f"{start}-")
        )
        records_create(tenant=tenant, items=items, batch_size=5_000)
    target = dek_rotate(tenant=tenant, actor=Actor.system("bench"), reason="profile")
    envelope().forget(str(tenant.pk))
    with connection.cursor() as django_cursor:
        django_cursor.execute("VACUUM (ANALYZE) archive_sealedfields")
    older = reencrypt.older_deks(tenant, target)
    size = settings.KEYWARD_REENCRYPT_BATCH

    # EXPLAIN one batch first, rolled back.
    rows = reencrypt.read_rows(tenant=tenant, older=older, after_id=0, size=size)
    batch = reencrypt.reseal(tenant=tenant, target=target, rows=rows)
    with transaction.atomic(), raw_cursor() as cursor:
        explain = "EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) "
        cursor.execute(
            explain + reencrypt._PG_SELECT, [tenant.pk, 0, reencrypt.LAST_ID, older, size]
        )
        print("## SELECT\n" + "\n".join(r[0] for r in cursor.fetchall()))
        cursor.execute(reencrypt._CREATE_BATCH_TABLE)
        with cursor.copy("COPY reencrypt_batch (id, pii, version) FROM STDIN (FORMAT BINARY)") as c:
            c.set_types(["int8", "bytea", "text"])
            for row in zip(batch.ids, batch.values, batch.versions, strict=True):
                c.write_row(row)
        cursor.execute("ANALYZE reencrypt_batch")
        cursor.execute(
            explain + reencrypt._UPDATE_FROM_BATCH, [target.pk, batch.ids[0], batch.last_id]
        )
        print("## UPDATE\n" + "\n".join(r[0] for r in cursor.fetchall()))
        transaction.set_rollback(True)
    # The same UPDATE with the transition table in memory (work_mem), rolled back.
    with transaction.atomic(), raw_cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(reencrypt._CREATE_BATCH_TABLE)
        with cursor.copy("COPY reencrypt_batch (id, pii, version) FROM STDIN (FORMAT BINARY)") as c:
            c.set_types(["int8", "bytea", "text"])
            for row in zip(batch.ids, batch.values, batch.versions, strict=True):
                c.write_row(row)
        cursor.execute(
            explain + reencrypt._UPDATE_FROM_BATCH, [target.pk, batch.ids[0], batch.last_id]
        )
        print("## UPDATE, work_mem 64MB\n" + "\n".join(r[0] for r in cursor.fetchall()))
        transaction.set_rollback(True)
    # The same UPDATE without the statement trigger's transition table (which
    # keeps a copy of every new row), rolled back: what the DEK check costs.
    with transaction.atomic(), raw_cursor() as cursor:
        cursor.execute("ALTER TABLE archive_sealedfields DISABLE TRIGGER archive_sealed_dek_update")
        cursor.execute(reencrypt._CREATE_BATCH_TABLE)
        with cursor.copy("COPY reencrypt_batch (id, pii, version) FROM STDIN (FORMAT BINARY)") as c:
            c.set_types(["int8", "bytea", "text"])
            for row in zip(batch.ids, batch.values, batch.versions, strict=True):
                c.write_row(row)
        cursor.execute(
            explain + reencrypt._UPDATE_FROM_BATCH, [target.pk, batch.ids[0], batch.last_id]
        )
        print("## UPDATE without the DEK trigger\n" + "\n".join(r[0] for r in cursor.fetchall()))
        transaction.set_rollback(True)

    profile = cProfile.Profile()
    profile.enable()
    reencrypt.reseal(tenant=tenant, target=target, rows=rows)
    profile.disable()
    print("## cProfile of re-sealing one batch")
    pstats.Stats(profile).sort_stats("tottime").print_stats(8)

    steps = Steps()
    after, moved = 0, 0
    while True:
        rows = steps.timed(
            "read (SELECT, binary fetch)",
            lambda: reencrypt.read_rows(
                tenant=tenant,
                older=older,
                after_id=after,  # noqa: B023
                size=size,
            ),
        )
        if not rows:
            break
        batch = steps.timed(
            "re-seal (AES-GCM open + seal)",
            lambda: reencrypt.reseal(tenant=tenant, target=target, rows=rows),  # noqa: B023
        )
        with transaction.atomic():
            with raw_cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
                cursor.execute(reencrypt._CREATE_BATCH_TABLE)

                def copy() -> None:
                    with cursor.copy(
                        "COPY reencrypt_batch (id, pii, version) FROM STDIN (FORMAT BINARY)"
                    ) as c:
                        c.set_types(["int8", "bytea", "text"])
                        for row in zip(batch.ids, batch.values, batch.versions, strict=True):  # noqa: B023
                            c.write_row(row)

                steps.timed("COPY into the batch table", copy)
                steps.timed(
                    "UPDATE ... FROM the batch table",
                    lambda: cursor.execute(
                        reencrypt._UPDATE_FROM_BATCH,
                        [target.pk, batch.ids[0], batch.last_id],  # noqa: B023
                    ),
                )
            commit_started = (time.perf_counter(), time.thread_time(), backend_cpu())
        total = steps.totals.setdefault("commit", [0.0, 0.0, 0.0])
        total[0] += time.perf_counter() - commit_started[0]
        total[1] += time.thread_time() - commit_started[1]
        total[2] += backend_cpu() - commit_started[2]
        moved += len(batch.ids)
        after = batch.last_id
    print(f"## {moved} rows, batches of {size}: microseconds per row")
    print(f"{'step':34} {'wall':>8} {'python':>8} {'postgres':>9}")
    sums = [0.0, 0.0, 0.0]
    for name, (wall, own, db) in steps.totals.items():
        print(
            f"{name:34} {wall / moved * 1e6:8.2f} {own / moved * 1e6:8.2f} {db / moved * 1e6:9.2f}"
        )
        sums = [sums[0] + wall, sums[1] + own, sums[2] + db]
    print(f"{'total':34} " + " ".join(f"{v / moved * 1e6:8.2f}" for v in sums))
    cpu = (sums[1] + sums[2]) / moved
    print(f"# CPU per row {cpu * 1e6:.2f} us: 2 cores allow {2 / cpu:.0f} rows/s")
    print(f"# load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
