"""Re-encryption of 200,000 records on PostgreSQL, against the same job without crypto.

Both runs use the same batches and the same SQL (`records.reencrypt.reencrypt_batch`);
the baseline swaps the re-sealing step (`records.reencrypt.reencrypt_rows`) for one
that passes the ciphertexts through unchanged, in this process only. Five rounds
(BENCH_REENCRYPT_ROUNDS) of both, each round after a fresh rotation; the best
round of each is reported, every round is printed as a comment.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("KEYWARD_MODE", "embedded")
os.environ.setdefault("KEYWARD_DEK_RETIRE_GRACE_SECONDS", "0")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from audit.services import Actor  # noqa: E402
from keys.models import DataKey, DekState  # noqa: E402
from keys.runtime import envelope  # noqa: E402
from keys.services.deks import dek_rotate  # noqa: E402
from records import reencrypt  # noqa: E402
from records.models import (  # noqa: E402
    ReencryptionJob,
    SealedFields,
)
from records.reencryption import reencryption_run  # noqa: E402
from records.services import records_create  # noqa: E402
from records.synthetic import synthetic_records  # noqa: E402
from tenants.models import Tenant  # noqa: E402
from tenants.services import tenant_create  # noqa: E402

RECORDS = int(os.environ.get("BENCH_REENCRYPT_RECORDS", "200000"))
ROUNDS = int(os.environ.get("BENCH_REENCRYPT_ROUNDS", "5"))
SLUG = "bench-reencrypt"


def passthrough(
    tenant_id: str, rows: list[tuple[Any, ...]], target_id: int
) -> tuple[list[int], list[bytes]]:
    return [row[0] for row in rows], [bytes(row[4]) for row in rows]


def load(tenant: Tenant) -> None:
    for start in range(0, RECORDS, 10_000):
        items = list(
            synthetic_records(min(10_000, RECORDS - start), seed=start, prefix=f"{start}-")
        )
        records_create(tenant=tenant, items=items, batch_size=5_000)


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (every process: ours and PostgreSQL's)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run(tenant: Tenant, target: DataKey, reseal: Any = None) -> tuple[float, float]:
    """The real job (checkpoints, pipelined reads), timed from start to retirement;
    with `reseal`, the same job with that re-sealing step instead of AES-GCM.

    Returns (seconds, busy CPU seconds of the machine meanwhile).
    """
    ReencryptionJob.objects.filter(tenant=tenant).delete()
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=target, total=RECORDS)
    real = reencrypt.reencrypt_rows
    reencrypt.reencrypt_rows = reseal or real
    try:
        cpu, started = busy_cpu_seconds(), time.perf_counter()
        job = reencryption_run(job_id=str(job.pk))
        elapsed, cpu = time.perf_counter() - started, busy_cpu_seconds() - cpu
    finally:
        reencrypt.reencrypt_rows = real
    assert job.done == RECORDS, f"moved {job.done} of {RECORDS}"
    return elapsed, cpu


def vacuum() -> None:
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) archive_sealedfields")


def main() -> None:
    if connection.vendor != "postgresql":
        print("bench_reencrypt needs PostgreSQL (DATABASE_URL)", file=sys.stderr)
        sys.exit(2)
    call_command("migrate", verbosity=0)
    Tenant.objects.filter(slug=SLUG).exists() and sys.exit(
        f"tenant {SLUG} exists; use a fresh database"
    )
    tenant = tenant_create(name="Bench", slug=SLUG, actor=Actor.system("bench"))
    started = time.perf_counter()
    load(tenant)
    print(f"# loaded {RECORDS} records in {time.perf_counter() - started:.1f} s")
    # A worker does not hold 200,000 synthetic records while it re-encrypts: the
    # garbage collector would walk them again and again.
    gc.collect()
    plains: list[tuple[float, float]] = []
    cryptos: list[tuple[float, float]] = []
    for round_ in range(ROUNDS):
        plain_round, crypto_round = one_round(tenant)
        plains.append(plain_round)
        cryptos.append(crypto_round)
        print(
            f"# round {round_ + 1}: {RECORDS / crypto_round[0]:.0f} rows/s, "
            f"{RECORDS / plain_round[0]:.0f} without crypto"
        )
    # The best round of each: these machines are shared, and a slower round
    # measures the neighbours, not the job.
    crypto, crypto_cpu = min(cryptos)
    plain, plain_cpu = min(plains)

    rate, plain_rate = RECORDS / crypto, RECORDS / plain
    print(f"BENCH reencrypt_rows_per_s {rate:.0f} rows/s")
    print(f"BENCH reencrypt_nocrypto_rows_per_s {plain_rate:.0f} rows/s")
    print(f"BENCH reencrypt_vs_nocrypto {rate / plain_rate:.2f} x")
    # Where the limit is: CPU per row of the whole machine (this process and
    # PostgreSQL's backends share its cores), and the rate if every core did
    # nothing but this job.
    cores = os.cpu_count() or 1
    per_row = crypto_cpu / RECORDS * 1e6
    print(f"BENCH reencrypt_cpu_us_per_row {per_row:.1f} us")
    print(f"BENCH reencrypt_nocrypto_cpu_us_per_row {plain_cpu / RECORDS * 1e6:.1f} us")
    print(f"BENCH reencrypt_cpu_busy {crypto_cpu / (crypto * cores):.2f} of {cores} cores")
    print(f"BENCH reencrypt_cpu_ceiling_rows_per_s {cores * 1e6 / per_row:.0f} rows/s")
    met = rate >= 100_000 and rate / plain_rate >= 0.5
    print(f"# targets (>= 100k rows/s and >= 0.5 of no-crypto): {'met' if met else 'MISSED'}")


def one_round(tenant: Tenant) -> tuple[tuple[float, float], tuple[float, float]]:
    """Rotate, then re-encrypt every record twice: without crypto, then for real.

    Returns ((seconds, CPU seconds) without crypto, the same for real).
    """
    old = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    old_wrapped = bytes(old.wrapped)
    new = dek_rotate(tenant=tenant, actor=Actor.system("bench"), reason="bench")
    envelope().forget(str(tenant.pk))
    vacuum()
    # Baseline: the same batches and SQL, ciphertexts passed through unchanged.
    plain = run(tenant, new, passthrough)
    # The baseline retired nothing it did not really re-encrypt: put the rows
    # back under the old DEK (bytes unchanged) and revive it for the real run.
    SealedFields.objects.filter(dek=new).update(dek=old)
    DataKey.objects.filter(pk=old.pk).update(state=DekState.RETIRING, wrapped=old_wrapped)
    vacuum()
    crypto = run(tenant, new)
    assert not SealedFields.objects.filter(dek__tenant=tenant).exclude(dek=new).exists()
    return plain, crypto


if __name__ == "__main__":
    main()
