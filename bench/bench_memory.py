"""How much a serving worker's memory grows while a 1 GiB object goes up and comes back.

Two gunicorn servers with one sync worker each, on PostgreSQL (DATABASE_URL)
and filesystem object storage in a temporary folder: the product, and the
same product with a bare streaming view beside it (bench/memory_urls.py: the
body read in 1 MiB pieces into a file, sent back with a FileResponse), the
baseline from the same run. For each: one small object first (imports,
connections, the data key unwrapped), then the worker's peak resident set
(VmHWM in /proc/<pid>/status) is reset (`5` into /proc/<pid>/clear_refs) and
read before and after a 1 GiB PUT, and again around the GET. The figure is
the growth of the peak: what holding a body whole would show.

`BENCH_MEMORY_MIB` sets the object's size (default 1024).

    .venv/bin/python bench/bench_memory.py
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("KEYWARD_MODE", "embedded")

MIB = 1024 * 1024
SIZE_MIB = int(os.environ.get("BENCH_MEMORY_MIB", "1024"))
TARGET_MIB = 64.0
PIECE = os.urandom(MIB)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(settings: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "console.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            "--workers=1",
            "--worker-class=sync",
            "--timeout=600",
            "--log-level=warning",
        ],
        cwd=ROOT,
        env={**os.environ, **env, "DJANGO_SETTINGS_MODULE": settings},
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
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


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        sys.exit(f"expected one gunicorn worker, found {children}")
    return int(children[0])


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> None:
    """Start a new high-water mark at the current resident set (Linux 4.0 and later)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def body(mib: int) -> Iterator[bytes]:
    for _ in range(mib):
        yield PIECE


def put(port: int, path: str, mib: int, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(
        "PUT",
        path,
        body=body(mib),
        headers={**headers, "Content-Length": str(mib * MIB), "Content-Type": "application/x-b"},
    )
    response = conn.getresponse()
    answer = response.read()
    if response.status not in (200, 201):
        sys.exit(f"PUT {path}: HTTP {response.status} {answer[:200]!r}")


def get(port: int, path: str, mib: int, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        sys.exit(f"GET {path}: HTTP {response.status}")
    digest, size = hashlib.sha256(), 0
    while chunk := response.read(MIB):
        digest.update(chunk)
        size += len(chunk)
    expected = hashlib.sha256()
    for piece in body(mib):
        expected.update(piece)
    if size != mib * MIB or digest.digest() != expected.digest():
        sys.exit(f"GET {path}: {size} bytes, not the object that went up")


def growth(master: int, run: object) -> float:
    """MiB the worker's peak resident set grew by while `run` ran."""
    pid = worker_pid(master)
    reset_peak(pid)
    before = peak_kib(pid)
    run()  # type: ignore[operator]
    return (peak_kib(pid) - before) / 1024


def measure(port: int, master: int, path: str, headers: dict[str, str]) -> tuple[float, float]:
    put(port, path + "-warm", 1, headers)
    get(port, path + "-warm", 1, headers)
    up = growth(master, lambda: put(port, path, SIZE_MIB, headers))
    down = growth(master, lambda: get(port, path, SIZE_MIB, headers))
    return up, down


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from api.tokens import api_token_create
    from audit.services import Actor
    from tenants.services import tenant_create

    if connection.vendor != "postgresql":
        print("bench_memory needs PostgreSQL (DATABASE_URL)", file=sys.stderr)
        sys.exit(2)
    call_command("migrate", verbosity=0)
    slug = f"bench-memory-{uuid.uuid4().hex[:8]}"
    tenant = tenant_create(name="Bench memory", slug=slug, actor=Actor.system("bench"))
    token = api_token_create(
        tenant=tenant,
        actor=Actor.system("bench"),
        name="bench",
        scopes=["objects:read", "objects:write"],
    ).text
    connection.close()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        env = {
            "KEYWARD_OBJECT_STORE": "filesystem",
            "KEYWARD_OBJECT_ROOT": str(Path(scratch) / "objects"),
            "KEYWARD_OBJECT_MAX_BYTES": str(2 * SIZE_MIB * MIB + MIB),
            "BENCH_MEMORY_BARE_ROOT": scratch,
        }
        servers = [
            start_server("console.settings", env),
            start_server("bench.memory_settings", env),
        ]
        try:
            (keyward, keyward_port), (bare, bare_port) = servers
            auth = {"Authorization": f"Bearer {token}"}
            put_mib, get_mib = measure(keyward_port, keyward.pid, "/api/v1/objects/big.bin", auth)
            bare_put, bare_get = measure(bare_port, bare.pid, "/bench/bare-object/big.bin", {})
        finally:
            for server, _ in servers:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
    print(f"# one {SIZE_MIB} MiB object, one sync gunicorn worker, growth of its peak RSS")
    print(f"BENCH object_put_rss_mib {put_mib:.1f} MiB")
    print(f"BENCH object_get_rss_mib {get_mib:.1f} MiB")
    print(f"BENCH object_put_rss_bare_mib {bare_put:.1f} MiB")
    print(f"BENCH object_get_rss_bare_mib {bare_get:.1f} MiB")
    met = max(put_mib, get_mib) < TARGET_MIB
    print(f"# target (< {TARGET_MIB:.0f} MiB each way): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
