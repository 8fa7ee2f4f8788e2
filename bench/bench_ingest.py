"""Records created per second through the API, against the same endpoint without crypto
and against the bare stack.

Three gunicorn servers on PostgreSQL (DATABASE_URL): the product as in
production; the same code with the benchmark's own settings
(`bench.plain_settings`: the same endpoints storing fields unencrypted, lookup
rows under an unkeyed hash); and the bare baseline a user would compare with
(`bench.bare_settings`: a plain Django view that checks the same bearer token
with one indexed lookup and stores the same record with one INSERT, see
bench/bareapi.py). The last two are refused in production mode.
8 client threads, each on a keep-alive connection, POST /api/v1/records with
an Idempotency-Key, a user record with five personal fields (four indexed).
Rounds alternate between the servers so all see the same machine; each
figure is the best round. BENCH_INGEST_RECORDS sets the records per round.

    .venv/bin/python bench/bench_ingest.py
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("KEYWARD_MODE", "embedded")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from api.tokens import api_token_create  # noqa: E402
from audit.services import Actor  # noqa: E402
from tenants.services import tenant_create  # noqa: E402

CLIENTS = 8
WORKERS = int(os.environ.get("BENCH_INGEST_WORKERS", str(max(2, 2 * (os.cpu_count() or 1)))))
PER_ROUND = int(os.environ.get("BENCH_INGEST_RECORDS", "2000"))
ROUNDS = 3
TARGET_RATIO = 0.7
TARGET_BARE = 0.6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(settings: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings}
    server = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            "console.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            f"--workers={WORKERS}",
            "--worker-class=sync",
            "--keep-alive=30",
            "--log-level=warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/v1/openapi.json")
            if conn.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("gunicorn did not start")


BATCH = 100  # records per request for the batch figures


def body(n: int, run: str) -> bytes:
    return json.dumps(record(n, run)).encode()


def batch_body(first: int, run: str) -> bytes:
    return json.dumps({"records": [record(n, run) for n in range(first, first + BATCH)]}).encode()


def record(n: int, run: str) -> dict[str, object]:
    return {
        "kind": "user",
        "external_id": f"{run}-{n}",
        "fields": {
            "email": f"person{n}@example.com",
            "full_name": f"Person Number {n}",
            "sid": f"S-1-5-21-1000-{n}",
            "user_principal_name": f"person{n}@corp.example.com",
            "entra_name": f"person{n}",
        },
    }


def ingest(port: int, token: str, count: int, batch: bool = False) -> float:
    """Seconds for CLIENTS threads to create `count` records between them
    (one per request, or BATCH per request to /records/batch)."""
    run = uuid.uuid4().hex[:8]
    step = BATCH if batch else 1
    per_client = count // CLIENTS // step
    errors: list[str] = []
    barrier = threading.Barrier(CLIENTS + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        for i in range(per_client):
            n = (c * per_client + i) * step
            conn.request(
                "POST",
                "/api/v1/records/batch" if batch else "/api/v1/records",
                body=batch_body(n, run) if batch else body(n, run),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"{run}-{n}",
                },
            )
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                errors.append(f"{response.status}")
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. HTTP {errors[0]}")
    return elapsed


def main() -> None:
    if connection.vendor != "postgresql":
        print("bench_ingest needs PostgreSQL (DATABASE_URL)", file=sys.stderr)
        sys.exit(2)
    call_command("migrate", verbosity=0)
    slug = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    tenant = tenant_create(name="Bench ingest", slug=slug, actor=Actor.system("bench"))
    token = api_token_create(
        tenant=tenant,
        actor=Actor.system("bench"),
        name="bench",
        scopes=["records:read", "records:write"],
    ).text
    connection.close()
    servers = [
        start_server("console.settings"),
        start_server("bench.plain_settings"),
        start_server("bench.bare_settings"),
    ]
    try:
        (_, crypto_port), (_, plain_port), (_, bare_port) = servers
        for port in (crypto_port, plain_port, bare_port):
            ingest(port, token, CLIENTS * 25)  # warm: connections, DEK and index key caches
        crypto, plain, bare, crypto_batch, plain_batch = [], [], [], [], []
        batched = PER_ROUND * 5  # records per batched round
        for _ in range(ROUNDS):
            crypto.append(PER_ROUND / ingest(crypto_port, token, PER_ROUND))
            plain.append(PER_ROUND / ingest(plain_port, token, PER_ROUND))
            bare.append(PER_ROUND / ingest(bare_port, token, PER_ROUND))
            crypto_batch.append(batched / ingest(crypto_port, token, batched, batch=True))
            plain_batch.append(batched / ingest(plain_port, token, batched, batch=True))
    finally:
        for server, _ in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    rate, plain_rate = max(crypto), max(plain)
    print(f"# {CLIENTS} clients, {WORKERS} gunicorn workers, {PER_ROUND} records per round")
    print(f"BENCH ingest_records_per_s {rate:.0f} records/s")
    print(f"BENCH ingest_nocrypto_records_per_s {plain_rate:.0f} records/s")
    print(f"BENCH ingest_vs_nocrypto {rate / plain_rate:.3f} x")
    bare_rate = max(bare)
    print(f"BENCH ingest_bare_records_per_s {bare_rate:.0f} records/s")
    print(f"BENCH ingest_vs_bare {rate / bare_rate:.3f} x")
    batch_rate, plain_batch_rate = max(crypto_batch), max(plain_batch)
    print(f"BENCH ingest_batch_records_per_s {batch_rate:.0f} records/s")
    print(f"BENCH ingest_batch_nocrypto_records_per_s {plain_batch_rate:.0f} records/s")
    print(f"BENCH ingest_batch_vs_nocrypto {batch_rate / plain_batch_rate:.3f} x")
    met = rate / plain_rate >= TARGET_RATIO
    print(f"# target (>= {TARGET_RATIO} of no-crypto): {'met' if met else 'MISSED'}")
    met = rate / bare_rate >= TARGET_BARE
    print(f"# target (>= {TARGET_BARE} of the bare stack): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
