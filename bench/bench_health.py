"""The beat's health round with 10,000 tenants on 2,000 AWS KMS keys (LocalStack).

Needs PostgreSQL (DATABASE_URL) and LocalStack (KEYWARD_TEST_AWS_ENDPOINT, which
scripts/bench.sh exports); run by `make bench` from the repository root.

The tenants are loaded with bulk inserts (state, AWS KMS key source, KEK
version, one data key each), five to a key, the state enabling BYOK leaves.
A first round builds each key's provider (boto3 session and client, once per
process) and is reported as the cold round; the timed rounds are the beat's
rounds as production runs them, spread over a quarter of the interval
(`health_checks_per_s`), and the same rounds with no spread, which say what the
machine can do (`health_checks_capacity_per_s`). Key-store calls per round are
counted where the providers count them (keys.usage).

Baseline in the same run: the bare boto3 calls a health answer is made of
(DescribeKey, ListKeyRotations) for every distinct key, from the same number of
threads, and the bare DescribeKey rate the brief of issue 17 names.

`BENCH_HEALTH_TENANTS` and `BENCH_HEALTH_KEYS` shrink the data set for a quick look;
`BENCH_HEALTH_ROUNDS` (1) repeats the timed rounds, the best of each is reported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("KEYWARD_MODE", "embedded")
if os.environ.get("KEYWARD_TEST_AWS_ENDPOINT"):
    os.environ.setdefault("KEYWARD_AWS_ENDPOINT_URL", os.environ["KEYWARD_TEST_AWS_ENDPOINT"])
# LocalStack takes the access key id as the account: Keyward acts as the vendor's.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "999988887777")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")

import boto3  # noqa: E402
import django  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from keys.models import DataKey, KekState, KekVersion, KeySource, SourceKind  # noqa: E402
from keys.providers.aws_kms import AwsKmsProvider  # noqa: E402
from keys.services import health  # noqa: E402
from keys.services.health import key_health_round  # noqa: E402
from tenants.models import ServiceState, Tenant  # noqa: E402

TENANTS = int(os.environ.get("BENCH_HEALTH_TENANTS", "10000"))
KEYS = int(os.environ.get("BENCH_HEALTH_KEYS", "2000"))
ROUNDS = int(os.environ.get("BENCH_HEALTH_ROUNDS", "1"))
CUSTOMER = "111122223333"
REGION = "eu-west-1"
TARGET_PER_S = 500.0


def kms_client() -> Any:
    make: Any = boto3.client
    return make(
        "kms",
        endpoint_url=settings.KEYWARD_AWS_ENDPOINT_URL,
        region_name=REGION,
        aws_access_key_id=CUSTOMER,
        aws_secret_access_key="bench",  # noqa: S106  (LocalStack does not check it)
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )


def in_threads(work: Any, items: list[Any]) -> float:
    """Seconds to run `work` over `items` from as many threads as a round keeps busy."""
    started = time.perf_counter()
    with ThreadPoolExecutor(settings.KEYWARD_HEALTH_CHECK_CONCURRENCY) as pool:
        list(pool.map(work, items))
    return time.perf_counter() - started


def load(prefix: str) -> list[str]:
    """KEYS keys in LocalStack, TENANTS tenants on them; the keys' ARNs."""
    kms = kms_client()
    arns: list[str] = []

    def create(_: int) -> None:
        arns.append(str(kms.create_key(Description="keyward bench")["KeyMetadata"]["Arn"]))

    seconds = in_threads(create, list(range(KEYS)))
    print(f"# created {KEYS:,} keys in LocalStack in {seconds:.1f} s")
    started = time.perf_counter()
    with transaction.atomic():
        tenants = Tenant.objects.bulk_create(
            [
                Tenant(
                    name=f"Bench health {i:05d}",
                    slug=f"{prefix}{i:05d}",
                    state=ServiceState.BYOK_ACTIVE,
                    byok_addon=True,
                )
                for i in range(TENANTS)
            ],
            batch_size=5_000,
        )
        sources = KeySource.objects.bulk_create(
            [
                KeySource(
                    tenant=tenant,
                    kind=SourceKind.AWS_KMS,
                    state="active",
                    config={"key_arn": arns[i % KEYS], "role_arn": "", "external_id": "bench"},
                )
                for i, tenant in enumerate(tenants)
            ],
            batch_size=5_000,
        )
        versions = KekVersion.objects.bulk_create(
            [
                KekVersion(source=source, provider_version=arns[i % KEYS], state=KekState.ACTIVE)
                for i, source in enumerate(sources)
            ],
            batch_size=5_000,
        )
        DataKey.objects.bulk_create(
            [
                DataKey(tenant=tenant, version=1, wrapped=os.urandom(184), kek_version=version)
                for tenant, version in zip(tenants, versions, strict=True)
            ],
            batch_size=5_000,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"# loaded {TENANTS:,} tenants in {time.perf_counter() - started:.1f} s")
    return arns


class Counted:
    """Health calls that reached the key store, counted at the provider boundary, and
    the seconds the round spent applying answers (its own work: the database)."""

    lock = threading.Lock()
    calls = 0
    applying = 0.0

    @classmethod
    def install(cls) -> None:
        real_health, real_apply = AwsKmsProvider.health, health._apply

        def counted_health(provider: AwsKmsProvider) -> Any:
            with cls.lock:
                cls.calls += 1
            return real_health(provider)

        def timed_apply(*args: Any) -> None:
            started = time.perf_counter()
            try:
                real_apply(*args)
            finally:
                cls.applying += time.perf_counter() - started

        AwsKmsProvider.health = counted_health  # type: ignore[method-assign,assignment]
        health._apply = timed_apply  # type: ignore[assignment]

    @classmethod
    def take(cls) -> tuple[int, float]:
        with cls.lock:
            taken, cls.calls, applying, cls.applying = cls.calls, 0, cls.applying, 0.0
        return taken, applying


def a_round(prefix: str, spread: float | None) -> tuple[float, int, dict[str, int], float]:
    """One round over the bench's tenants: seconds, key-store calls, findings, and the
    seconds spent applying answers."""
    Counted.take()
    started = time.perf_counter()
    found = key_health_round(tenants=Tenant.objects.filter(slug__startswith=prefix), spread=spread)
    seconds = time.perf_counter() - started
    calls, applying = Counted.take()
    tally: dict[str, int] = {}
    for result in found.values():
        tally[result] = tally.get(result, 0) + 1
    return seconds, calls, tally, applying


def main() -> int:
    if connection.vendor != "postgresql":
        print("bench_health needs PostgreSQL (DATABASE_URL)", file=sys.stderr)
        return 2
    if not settings.KEYWARD_AWS_ENDPOINT_URL:
        print("bench_health needs LocalStack (KEYWARD_TEST_AWS_ENDPOINT)", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0, interactive=False)
    Counted.install()
    prefix = f"bench-health-{uuid.uuid4().hex[:6]}-"
    arns = load(prefix)
    concurrency = settings.KEYWARD_HEALTH_CHECK_CONCURRENCY
    print(f"# {TENANTS:,} tenants on {KEYS:,} keys, {concurrency} calls in flight at most")

    cold, calls, tally, _ = a_round(prefix, spread=0.0)
    print(f"# cold round (providers built): {cold:.1f} s, {calls} calls, {tally}")
    if tally != {"ok": TENANTS}:
        print(f"bench_health: the cold round found {tally}, not all ok", file=sys.stderr)
        return 1

    kms = kms_client()

    def describe(arn: str) -> None:
        kms.describe_key(KeyId=arn)

    def answer(arn: str) -> None:
        kms.describe_key(KeyId=arn)
        # LocalStack does not emulate it: the provider asks and is refused too.
        with contextlib.suppress(ClientError):
            kms.list_key_rotations(KeyId=arn)

    bare_describe = in_threads(describe, arns)
    bare_answers = in_threads(answer, arns)

    capacity: list[float] = []
    scheduled: list[float] = []
    own: list[float] = []
    for _ in range(ROUNDS):
        seconds, calls, tally, applying = a_round(prefix, spread=0.0)
        capacity.append(seconds)
        own.append(applying)
        print(f"# round, no spread: {seconds:.1f} s, {calls} key-store calls, {tally}")
        seconds, calls, tally, _ = a_round(prefix, spread=None)
        scheduled.append(seconds)
        print(f"# round, spread as the beat runs it: {seconds:.1f} s, {calls} calls, {tally}")
    # The best of each: the machine is shared, a slower round measures the neighbours.
    best_capacity, best_scheduled = min(capacity), min(scheduled)
    rate = TENANTS / best_scheduled
    print(f"BENCH health_checks_per_s {rate:.0f} checks/s")
    print(f"BENCH health_round_s {best_scheduled:.1f} s")
    print(f"BENCH health_checks_capacity_per_s {TENANTS / best_capacity:.0f} checks/s")
    print(f"BENCH health_key_store_calls_per_round {calls} calls")
    print(f"BENCH health_distinct_keys {KEYS} keys")
    print(f"BENCH health_cold_round_s {cold:.1f} s")
    # The round's own work (reading states, deciding, keeping findings), without
    # the key store: the rate a round would reach if the key store answered at once.
    print(f"BENCH health_own_work_checks_per_s {TENANTS / min(own):.0f} checks/s")
    print(f"BENCH health_baseline_bare_describe_per_s {KEYS / bare_describe:.0f} calls/s")
    print(f"BENCH health_baseline_bare_answers_per_s {KEYS / bare_answers:.0f} keys/s")
    # Keys answered per second by the round (no spread) against the bare calls
    # that make up an answer: what the round's own work costs on top.
    print(f"BENCH health_keys_vs_bare {KEYS / best_capacity / (KEYS / bare_answers):.2f} x")
    verdict = "met" if rate >= TARGET_PER_S else "MISSED"
    print(f"# target >= {TARGET_PER_S:.0f} checks/s: {verdict} ({rate:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
