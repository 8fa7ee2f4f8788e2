"""Private Redis and PostgreSQL servers that a test may stop and restart.

The suite's shared servers (scripts/servers.sh) serve every other test at the
same time, so a test that restarts a server starts its own: the same Debian
binaries, on a free loopback port, in a temporary folder, stopped when the
test ends. Each restart is a real one: the process exits and a new one starts
on the same port, so every client connection is cut and must be made again.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, *, up: bool, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                listening = True
        except OSError:
            listening = False
        if listening == up:
            return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {timeout} s")


class PrivateRedis:
    """A redis-server of this test's own, without persistence unless asked for.

    `restart(empty=True)` is a restart of a server without persistence (all keys
    gone); `snapshot()` then `restart(empty=False)` is one that comes back with
    what its last snapshot held, older than what it had when it stopped.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.folder), "--dbfilename", "dump.rdb",
                "--save", "", "--appendonly", "no", "--loglevel", "warning",
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _wait_port(self.port, up=True)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            check=True, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip

    def snapshot(self) -> None:
        """Write what the server holds now to disk: what a restart will load."""
        assert self.cli("SAVE") == "OK"

    def stop(self) -> None:
        """Kill the server (SIGKILL: no snapshot on the way out)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None
        _wait_port(self.port, up=False)

    def restart(self, *, empty: bool = True, down_for: float = 0.0) -> None:
        self.stop()
        if empty:
            (self.folder / "dump.rdb").unlink(missing_ok=True)
        time.sleep(down_for)
        self.start()
        self.restarts += 1


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    folder = Path(tempfile.mkdtemp(prefix="keyward-redis-"))
    server = PrivateRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the postgres user then."""
    if os.getuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own: fsync off like the suite's, commits synchronous."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "pg"
        self.port = free_port()
        self.restarts = 0

    def init(self) -> None:
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            _as_postgres([
                str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def _ctl(self, *args: str) -> None:
        # Commits are synchronous, as production runs them: a restart here is
        # a crash of the server process (the kernel keeps what it wrote, so
        # fsync can stay off), and it must lose no acknowledged commit. With
        # synchronous_commit off a crash drops the last commits the clients
        # were told about, a job's bookkeeping among them, which no correctly
        # configured server does. Batches that ask for an asynchronous commit
        # themselves (re-encryption) still get one.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
            "-c fsync=off -c full_page_writes=off"
        )
        subprocess.run(
            _as_postgres([
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                "-w", "-o", options, *args,
            ]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: the server process ends at once, as in a crash; recovery at start."""
        self._ctl("stop", "-m", mode)

    def restart(self, *, down_for: float = 0.0, mode: str = "immediate") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def createdb(self, name: str) -> None:
        subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             name],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    folder = Path(tempfile.mkdtemp(prefix="keyward-pg-"))
    server = PrivatePostgres(folder)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
