"""A confirmed key rotation's rewrap of 10,000 DEKs against LocalStack's KMS, with and
without 1,000,000 records stored under them.

Needs PostgreSQL (DATABASE_URL) and LocalStack (KEYWARD_TEST_AWS_ENDPOINT, which
scripts/bench.sh exports); run by `make bench` from the repository root.

One tenant on a customer AWS KMS key through an alias, reached through a role
in the customer's account (the setup the registration page asks for), with
DEKS data keys wrapped under it (made here with KMS Encrypt, the tenant's
encryption context).
Each rotation is the real one: the alias moves to a new key, the health check
pauses the tenant, a person confirms, and `kek_rewrap_run` (timed) rewraps every
DEK, KEYWARD_KEK_REWRAP_CONCURRENCY calls in flight at most. The first rotation
runs with no records; then RECORDS records are loaded with COPY under the same
DEKs and the second rotation runs (`kek_rewrap_with_1m_records_ratio`: its time
over the first's; the rewrap never reads a record).

Baseline in the same run: the bare boto3 calls a rewrap is made of, over a
sample of the DEKs, from as many threads as the rewrap uses (and the first from
one): ReEncrypt, what a rotation inside one key source sends, and the Decrypt
then Encrypt pairs it sends where the key store cannot re-encrypt (another
source, or a key policy without kms:ReEncrypt*).

`BENCH_REWRAP_DEKS`, `BENCH_REWRAP_RECORDS` and `BENCH_REWRAP_BARE_PAIRS`
shrink it for a quick look.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from audit.services import Actor  # noqa: E402
from keys.models import (  # noqa: E402
    DataKey,
    DekState,
    KekState,
    KekVersion,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.registry import provider_for  # noqa: E402
from keys.runtime import dek_context  # noqa: E402
from keys.services.health import key_health_check  # noqa: E402
from keys.services.rotation import kek_confirm_rotation, kek_rewrap_run  # noqa: E402
from records.bulk import copy_rows  # noqa: E402
from records.models import Record, SealedFields  # noqa: E402
from tenants.models import ServiceState, Tenant  # noqa: E402
from tenants.services import tenant_create  # noqa: E402

DEKS = int(os.environ.get("BENCH_REWRAP_DEKS", "10000"))
RECORDS = int(os.environ.get("BENCH_REWRAP_RECORDS", "1000000"))
BARE_PAIRS = int(os.environ.get("BENCH_REWRAP_BARE_PAIRS", "1000"))
CUSTOMER = "111122223333"
ROLE = f"arn:aws:iam::{CUSTOMER}:role/keyward-bench"
REGION = "eu-west-1"
TARGET_PER_S = 1000.0
TARGET_RATIO = 1.10


class BenchError(Exception):
    """The benchmark cannot produce honest numbers."""


def kms_client() -> Any:
    make: Any = boto3.client
    return make(
        "kms",
        endpoint_url=settings.KEYWARD_AWS_ENDPOINT_URL,
        region_name=REGION,
        aws_access_key_id=CUSTOMER,
        aws_secret_access_key="bench",  # noqa: S106  (LocalStack does not check it)
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=max(10, settings.KEYWARD_KEK_REWRAP_CONCURRENCY),
        ),
    )


def in_threads(threads: int, work: Any, items: list[Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, items))
    return time.perf_counter() - started, results


def setup(kms: Any) -> tuple[Tenant, KeySource, str, Any]:
    """The tenant on key A through an alias, with DEKS data keys wrapped under A."""
    slug = f"bench-rewrap-{uuid.uuid4().hex[:8]}"
    tenant = tenant_create(name="Bench rewrap", slug=slug, actor=Actor.system("bench"))
    user = get_user_model()._default_manager.create_user(
        username=f"owner@{slug}.example", email=f"owner@{slug}.example"
    )
    key_a = str(kms.create_key(Description="keyward bench")["KeyMetadata"]["Arn"])
    alias = f"alias/{slug}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_a.rsplit("/", 1)[1])
    with transaction.atomic():
        KeySource.objects.filter(tenant=tenant).update(state=SourceState.RETIRED)
        source = KeySource.objects.create(
            tenant=tenant,
            kind=SourceKind.AWS_KMS,
            state=SourceState.ACTIVE,
            config={
                "key_arn": f"arn:aws:kms:{REGION}:{CUSTOMER}:{alias}",
                "role_arn": ROLE,
                "external_id": "keyward-bench",
            },
        )
        version_a = KekVersion.objects.create(
            source=source, provider_version=key_a, state=KekState.ACTIVE
        )
        DataKey.objects.filter(tenant=tenant).delete()  # the first, vendor-wrapped one
    provider = provider_for(source)
    tenant_id = str(tenant.pk)

    def wrapped(version: int) -> bytes:
        material = secrets.token_bytes(32)
        return provider.wrap(material, dek_context(tenant_id, version)).blob

    seconds, blobs = in_threads(
        settings.KEYWARD_KEK_REWRAP_CONCURRENCY, wrapped, list(range(1, DEKS + 1))
    )
    DataKey.objects.bulk_create(
        [
            DataKey(
                tenant=tenant,
                version=version,
                wrapped=blob,
                kek_version=version_a,
                state=DekState.ACTIVE if version == DEKS else DekState.RETIRING,
            )
            for version, blob in enumerate(blobs, start=1)
        ],
        batch_size=5_000,
    )
    Tenant.objects.filter(pk=tenant.pk).update(state=ServiceState.BYOK_ACTIVE)
    tenant.refresh_from_db()
    print(f"# {DEKS:,} DEKs wrapped under the first key in {seconds:.1f} s")
    return tenant, source, alias, user


def rotation(kms: Any, tenant: Tenant, source: KeySource, alias: str, user: Any) -> float:
    """Move the alias to a new key, detect, confirm; the rewrap's seconds."""
    new_key = str(kms.create_key(Description="keyward bench")["KeyMetadata"]["Arn"])
    kms.update_alias(AliasName=alias, TargetKeyId=new_key.rsplit("/", 1)[1])
    found = key_health_check(tenant=tenant)
    if found != "rotation_pending":
        raise BenchError(f"the health check found {found!r}, not the rotation")
    kek_confirm_rotation(tenant=tenant, actor=Actor.for_user(user))
    started = time.perf_counter()
    answer = kek_rewrap_run(source_id=str(source.pk))
    seconds = time.perf_counter() - started
    moved = DataKey.objects.filter(tenant=tenant, kek_version__provider_version=new_key).count()
    if answer != "done" or moved != DEKS:
        raise BenchError(f"the rewrap answered {answer!r} with {moved} of {DEKS} DEKs moved")
    return seconds


def load_records(tenant: Tenant) -> float:
    """RECORDS records (COPY), their sealed fields spread over the tenant's DEKs."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    with transaction.atomic():
        copy_rows(
            Record._meta.db_table,
            ["uid", "tenant_id", "kind", "external_id", "created"],
            ["uuid", "uuid", "varchar", "varchar", "timestamptz"],
            ((uuid.uuid4(), tenant.pk, "device", f"bench-{i}", now) for i in range(RECORDS)),
        )
        first = DataKey.objects.filter(tenant=tenant).order_by("pk").values_list("pk", flat=True)[0]
        with connection.cursor() as cursor:
            # Sealed values the rewrap never reads: bytes of the right size will do.
            cursor.execute(
                f"INSERT INTO {SealedFields._meta.db_table} (record_id, dek_id, pii) "
                "SELECT id, %s + id %% %s, decode(md5(id::text) || md5(uid::text), 'hex') "
                f"FROM {Record._meta.db_table} WHERE tenant_id = %s",
                [first, DEKS, tenant.pk],
            )
            cursor.execute("ANALYZE")
    return time.perf_counter() - started


def bare(kms: Any, tenant: Tenant) -> tuple[float, float, float]:
    """Per second: Decrypt-then-Encrypt pairs from the rewrap's threads and from one,
    and ReEncrypt calls (to the same key) from the rewrap's threads."""
    rows = list(
        DataKey.objects.filter(tenant=tenant)
        .order_by("pk")
        .values_list("version", "wrapped", "kek_version__provider_version")[:BARE_PAIRS]
    )
    tenant_id = str(tenant.pk)

    def pair(row: tuple[int, bytes, str]) -> None:
        version, blob, key = row
        context = dek_context(tenant_id, version)
        plain = kms.decrypt(CiphertextBlob=bytes(blob), KeyId=key, EncryptionContext=context)
        kms.encrypt(KeyId=key, Plaintext=plain["Plaintext"], EncryptionContext=context)

    def reencrypt(row: tuple[int, bytes, str]) -> None:
        version, blob, key = row
        context = dek_context(tenant_id, version)
        kms.re_encrypt(
            CiphertextBlob=bytes(blob),
            SourceKeyId=key,
            SourceEncryptionContext=context,
            DestinationKeyId=key,
            DestinationEncryptionContext=context,
        )

    threaded, _ = in_threads(settings.KEYWARD_KEK_REWRAP_CONCURRENCY, pair, rows)
    single_rows = rows[: max(1, len(rows) // 5)]
    single, _ = in_threads(1, pair, single_rows)
    moved, _ = in_threads(settings.KEYWARD_KEK_REWRAP_CONCURRENCY, reencrypt, rows)
    return len(rows) / threaded, len(single_rows) / single, len(rows) / moved


def main() -> int:
    if connection.vendor != "postgresql":
        print("bench_rewrap needs PostgreSQL (DATABASE_URL)", file=sys.stderr)
        return 2
    if not settings.KEYWARD_AWS_ENDPOINT_URL:
        print("bench_rewrap needs LocalStack (KEYWARD_TEST_AWS_ENDPOINT)", file=sys.stderr)
        return 2
    call_command("migrate", verbosity=0, interactive=False)
    kms = kms_client()
    concurrency = settings.KEYWARD_KEK_REWRAP_CONCURRENCY
    try:
        tenant, source, alias, user = setup(kms)
        print(f"# {concurrency} key-store calls in flight at most")
        empty = rotation(kms, tenant, source, alias, user)
        print(f"# rewrap with no records: {empty:.1f} s")
        seconds = load_records(tenant)
        print(f"# loaded {RECORDS:,} records (COPY) in {seconds:.1f} s")
        full = rotation(kms, tenant, source, alias, user)
        print(f"# rewrap with {RECORDS:,} records: {full:.1f} s")
        threaded, single, reencrypts = bare(kms, tenant)
    except BenchError as exc:
        print(f"bench_rewrap: {exc}", file=sys.stderr)
        return 1
    rate = DEKS / empty
    ratio = full / empty
    print(f"BENCH kek_rewrap_deks_per_s {rate:.0f} DEKs/s")
    print(f"BENCH kek_rewrap_with_1m_records_deks_per_s {DEKS / full:.0f} DEKs/s")
    print(f"BENCH kek_rewrap_with_1m_records_ratio {ratio:.3f} x")
    print(f"BENCH kek_rewrap_baseline_bare_kms_pairs_per_s {threaded:.0f} pairs/s")
    print(f"BENCH kek_rewrap_baseline_bare_kms_sequential_pairs_per_s {single:.0f} pairs/s")
    print(f"BENCH kek_rewrap_baseline_bare_kms_reencrypt_per_s {reencrypts:.0f} calls/s")
    print(f"BENCH kek_rewrap_vs_bare_kms_pairs {rate / threaded:.3f} x")
    print(f"BENCH kek_rewrap_vs_bare_kms {rate / reencrypts:.3f} x")
    met = "met" if rate >= TARGET_PER_S else "MISSED"
    print(f"# target >= {TARGET_PER_S:.0f} DEKs/s: {met} ({rate:.0f})")
    met = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"# target: with records within {TARGET_RATIO - 1:.0%}: {met} ({ratio:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
