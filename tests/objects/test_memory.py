"""A large object goes up and comes back through a real gunicorn worker without the
worker ever holding it whole: its peak resident set grows by far less than the object."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.tokens import api_token_create
from audit.services import Actor
from tenants.services import tenant_create
from tests.support.deployment import free_port
from tests.support.worker import worker_database_url

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
OBJECT_MIB = 64
# Holding the body whole once would grow the peak by 64 MiB; streaming grows it by a
# few (a 1 MiB read, a segment, the allocator's slack). Half the object leaves room
# for a noisy machine and none for a whole copy.
MOST_MIB = OBJECT_MIB / 2


def start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "KEYWARD_MODE": "embedded",
        "KEYWARD_OBJECT_STORE": "filesystem",
        "KEYWARD_OBJECT_ROOT": str(tmp_path / "objects"),
        "KEYWARD_OBJECT_MAX_BYTES": str(2 * OBJECT_MIB * MIB),
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "console.wsgi:application",
            f"--bind=127.0.0.1:{port}",
            "--workers=1",
            "--worker-class=sync",
            "--timeout=120",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return server, port
        except OSError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGKILL)
    pytest.fail("gunicorn did not start: " + (tmp_path / "gunicorn.log").read_text()[-2000:])


def worker_of(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def peak_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def pieces(mib: int) -> Iterator[bytes]:
    block = hashlib.sha256(b"keyward").digest() * (MIB // 32)
    for n in range(mib):
        yield n.to_bytes(8, "big") + block[8:]


def put(port: int, token: str, key: str, mib: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(
        "PUT",
        f"/api/v1/objects/{key}",
        body=pieces(mib),
        headers={"Authorization": f"Bearer {token}", "Content-Length": str(mib * MIB)},
    )
    response = conn.getresponse()
    response.read()
    return response.status


def get(port: int, token: str, key: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", f"/api/v1/objects/{key}", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    digest = hashlib.sha256()
    while chunk := response.read(MIB):
        digest.update(chunk)
    return response.status, digest.hexdigest()


@pytest.mark.django_db(transaction=True)
def test_a_large_object_streams_through_a_worker_both_ways(tmp_path: Path) -> None:
    system = Actor.system("tests")
    tenant = tenant_create(name="Initech", slug="initech", actor=system)
    token = api_token_create(
        tenant=tenant, actor=system, name="t", scopes=["objects:read", "objects:write"]
    ).text
    server, port = start(tmp_path)
    try:
        # Warm: imports, the connection, the data key unwrapped and cached.
        assert put(port, token, "warm.bin", 1) == 201
        assert get(port, token, "warm.bin")[0] == 200
        worker = worker_of(server.pid)

        reset_peak(worker)
        before = peak_mib(worker)
        assert put(port, token, "big.bin", OBJECT_MIB) == 201
        grown_up = peak_mib(worker) - before

        reset_peak(worker)
        before = peak_mib(worker)
        status, digest = get(port, token, "big.bin")
        grown_down = peak_mib(worker) - before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    expected = hashlib.sha256()
    for piece in pieces(OBJECT_MIB):
        expected.update(piece)
    assert (status, digest) == (200, expected.hexdigest())
    assert grown_up < MOST_MIB, f"the worker grew by {grown_up:.1f} MiB for a PUT"
    assert grown_down < MOST_MIB, f"the worker grew by {grown_down:.1f} MiB for a GET"
