"""`make loadtest`: Locust against a production deployment, with key events in the middle.

50 API clients write and read records and objects and 5 console users page the
Keys, Data and Audit pages, against gunicorn, a Celery worker, beat and
PostgreSQL (tests/support/deployment.py), for LOADTEST_SECONDS (300). The tenant
is protected by a customer's AWS KMS key (LocalStack). A quarter of the way in
its data key is rotated, half way its key is revoked, three quarters of the way
it is restored. Afterwards:

1. the only errors are the documented ones: 403 `key_revoked` while revoked,
   503 with Retry-After while writes are paused;
2. every write that was acknowledged reads back, byte for byte;
3. no Idempotency-Key is stored twice;
4. `audit_verify` passes.

It prints throughput, latency percentiles and errors by code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.aws import aws_endpoint
from tests.support.deployment import BIN, ROOT, Deployment, production_deployment, wait_until

SECONDS = int(os.environ.get("LOADTEST_SECONDS", "300"))
SLUG = "load"
OWNER = "owner@load.test"
PASSWORD = "load test password 77"  # noqa: S105 (the load test's own throwaway owner)
CUSTOMER_ACCOUNT = "111122223333"
VENDOR_ACCOUNT = "999988887777"

SETUP = """
import json, boto3
from audit.services import Actor
from django.contrib.auth import get_user_model
from api.tokens import api_token_create
from keys.models import SourceKind
from keys.services.sources import byok_enable, key_source_register, key_source_test
from tenants.services import membership_add, tenant_addon_enable, tenant_create
system = Actor.system("load test")
tenant = tenant_create(name="Load", slug="%(slug)s", actor=system)
# BYOK is a licensed add-on: the vendor turns it on before the customer brings a key.
tenant = tenant_addon_enable(tenant=tenant, actor=system)
owner = get_user_model().objects.create_user(
    username="%(owner)s", email="%(owner)s", password="%(password)s")
membership_add(tenant=tenant, user=owner, role="owner", actor=system)
kms = boto3.client("kms", endpoint_url="%(endpoint)s", region_name="eu-west-1",
    aws_access_key_id="%(customer)s", aws_secret_access_key="localstack")
arn = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
source = key_source_register(tenant=tenant, kind=SourceKind.AWS_KMS,
    config={"key_arn": arn, "role_arn": "", "external_id": "keyward-load"}, actor=system)
source = key_source_test(source=source, actor=system)
assert source.test_passed, source.test_results
byok_enable(tenant=tenant, source=source, actor=Actor.for_user(owner, role="Owner"))
scopes = ["records:read", "records:write", "objects:read", "objects:write"]
issued = api_token_create(tenant=tenant, actor=system, name="load", scopes=scopes)
print(json.dumps({"token": issued.text}))
"""

STATE = """
from tenants.models import Tenant
print(Tenant.objects.get(slug="%s").state)
"""

EVENTS = {
    "rotate": """
from audit.services import Actor
from keys.services.deks import dek_rotate
from tenants.models import Tenant
dek_rotate(tenant=Tenant.objects.get(slug="%(slug)s"), actor=Actor.system("load test"),
    reason="forced rotation under load")
""",
    "revoke": """
from audit.services import Actor
from django.contrib.auth import get_user_model
from keys.services.lifecycle import tenant_revoke
from tenants.models import Tenant
owner = Actor.for_user(get_user_model().objects.get(username="%(owner)s"), role="Owner")
tenant_revoke(tenant=Tenant.objects.get(slug="%(slug)s"), actor=owner, confirm="%(slug)s")
""",
    "restore": """
from audit.services import Actor
from django.contrib.auth import get_user_model
from keys.services.lifecycle import tenant_restore
from tenants.models import Tenant
owner = Actor.for_user(get_user_model().objects.get(username="%(owner)s"), role="Owner")
tenant_restore(tenant=Tenant.objects.get(slug="%(slug)s"), actor=owner)
""",
}

DUPLICATE_KEYS = """
from django.db.models import Count
from api.models import IdempotencyKey
stored = IdempotencyKey.objects.values("tenant", "key").annotate(n=Count("id"))
print(stored.filter(n__gt=1).count())
"""


# While revoked, reads and writes are refused (403); while the rotation's rewrap
# pauses writes or the restore's checks run, writes wait (503 with Retry-After).
EXPECTED_ERRORS = {"403 key_revoked", "503 paused", "503 key_unavailable", "503 migrating"}


def aws_env() -> dict[str, str]:
    return {
        "KEYWARD_AWS_ENDPOINT_URL": aws_endpoint(),
        "AWS_ACCESS_KEY_ID": VENDOR_ACCOUNT,
        "AWS_SECRET_ACCESS_KEY": "vendor-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "KEYWARD_AWS_TIMEOUT_SECONDS": "5",
    }


def shell(deployment: Deployment, code: str) -> str:
    return deployment.manage("shell", "--verbosity", "0", "--command", code).strip()


def key_events(deployment: Deployment, done: list[tuple[float, str]], start: float) -> None:
    for fraction, name in ((0.25, "rotate"), (0.5, "revoke"), (0.75, "restore")):
        time.sleep(max(0.0, start + SECONDS * fraction - time.monotonic()))
        shell(deployment, EVENTS[name] % {"slug": SLUG, "owner": OWNER})
        done.append((round(time.monotonic() - start, 1), name))


def api(deployment: Deployment, token: str, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 (the deployment's own http URL)
        f"{deployment.url}/api/v1/{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def read_stats(prefix: Path) -> tuple[list[dict[str, str]], Counter[str]]:
    with Path(f"{prefix}_stats.csv").open(encoding="utf-8") as stats:
        rows = list(csv.DictReader(stats))
    errors: Counter[str] = Counter()
    with Path(f"{prefix}_failures.csv").open(encoding="utf-8") as failures:
        for row in csv.DictReader(failures):
            # Locust writes a failure as CatchResponseError('503 paused').
            found = re.search(r"'(.*)'", row["Error"])
            errors[found.group(1) if found else row["Error"]] += int(row["Occurrences"])
    return rows, errors


@pytest.mark.e2e
def test_load_with_a_rotation_a_revoke_and_a_restore(tmp_path: Path) -> None:
    with production_deployment(tmp_path, workers=3, env=aws_env()) as deployment:
        setup = shell(
            deployment,
            SETUP
            % {
                "slug": SLUG,
                "owner": OWNER,
                "password": PASSWORD,
                "endpoint": aws_endpoint(),
                "customer": CUSTOMER_ACCOUNT,
            },
        )
        # Log lines share the output: the token is the one JSON line.
        token = next(json.loads(x) for x in setup.splitlines() if x.startswith("{"))["token"]
        wait_until(
            "the tenant to be on its key",
            lambda: shell(deployment, STATE % SLUG).endswith("byok_active"),
            deployment,
            seconds=120,
        )
        acks = tmp_path / "acks.jsonl"
        prefix = tmp_path / "locust"
        env = {
            **os.environ,
            "LOADTEST_TOKEN": token,
            "LOADTEST_SLUG": SLUG,
            "LOADTEST_ACKS": str(acks),
            "LOADTEST_CONSOLE_EMAIL": OWNER,
            "LOADTEST_CONSOLE_PASSWORD": PASSWORD,
        }
        events: list[tuple[float, str]] = []
        start = time.monotonic()
        chaos = threading.Thread(target=key_events, args=(deployment, events, start))
        chaos.start()
        subprocess.run(
            [
                str(BIN / "locust"),
                "-f", str(ROOT / "loadtest" / "locustfile.py"),
                "--headless", "--users", "55", "--spawn-rate", "20",
                "--run-time", f"{SECONDS}s", "--stop-timeout", "10",
                "--host", deployment.url, "--csv", str(prefix), "--only-summary",
            ],
            env=env,
            cwd=tmp_path,
            check=False,
            timeout=SECONDS + 120,
        )  # fmt: skip
        chaos.join()
        rows, errors = read_stats(prefix)
        report(rows, errors, events)

        # 1. Only the documented answers of a revoked key and of the pause.
        assert set(errors) <= EXPECTED_ERRORS, errors
        assert [name for _, name in events] == ["rotate", "revoke", "restore"]
        assert shell(deployment, STATE % SLUG).endswith("byok_active")
        # 2. Every acknowledged write reads back.
        acked = [json.loads(line) for line in acks.read_text().splitlines()]
        assert acked, "no write was acknowledged"
        for ack in acked:
            if ack["kind"] == "record":
                status, body = api(deployment, token, f"records/{ack['id']}")
                assert status == 200 and json.loads(body)["fields"] == ack["fields"], ack
            else:
                status, body = api(deployment, token, f"objects/{ack['key']}")
                assert status == 200 and len(body) == ack["size"], ack
                assert hashlib.sha256(body).hexdigest() == ack["sha256"], ack
        # 3. and 4.
        assert shell(deployment, DUPLICATE_KEYS).splitlines()[-1] == "0"
        verified = deployment.manage("audit_verify")
        assert "BROKEN" not in verified, verified
        print(f"BENCH load_acknowledged_writes {len(acked)} writes")


def report(rows: list[dict[str, str]], errors: Counter[str], events: Any) -> None:
    print(f"\nkey events (seconds into the run): {events}")
    print(f"{'request':<22}{'count':>8}{'req/s':>8}{'p50':>7}{'p95':>7}{'p99':>7}  ms")
    for row in rows:
        print(
            f"{row['Name']:<22}{row['Request Count']:>8}{float(row['Requests/s']):>8.1f}"
            f"{row['50%']:>7}{row['95%']:>7}{row['99%']:>7}"
        )
    total = next(r for r in rows if r["Name"] == "Aggregated")
    print(f"BENCH load_requests_per_s {float(total['Requests/s']):.1f} req/s")
    for name, percentile in (("p50", "50%"), ("p95", "95%"), ("p99", "99%")):
        print(f"BENCH load_latency_{name} {total[percentile]} ms")
    print(f"errors by code: {dict(errors) or 'none'}")
