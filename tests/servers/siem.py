"""Receivers of a streamed audit trail, on loopback: Debian's rsyslog with TLS, and an
HTTPS webhook receiver that checks each request's HMAC signature.

Certificates come from the `openssl` command line: a CA made per run and a server
certificate for 127.0.0.1 signed by it (the destination's "own CA certificates").

Production code must not import this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path

    @property
    def ca_pem(self) -> str:
        return self.ca.read_text()


def make_certs(folder: Path) -> Certs:
    """A CA and a server certificate for 127.0.0.1 (and localhost) signed by it."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Keyward test SIEM CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"rsyslogd exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass(frozen=True)
class SyslogLine:
    """One message as rsyslog parsed it: header fields, structured data and the event."""

    app: str
    msgid: str
    structured: str
    event: dict[str, Any]


class Rsyslog:
    """rsyslogd in the foreground with a TLS (gtls) imtcp input on a free loopback
    port, writing each message it parsed to a file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.certs = make_certs(folder / "certs")
        self.port = free_port()
        self.output = folder / "received.log"
        self.log = folder / "rsyslogd.log"
        self.conf = folder / "rsyslog.conf"
        self.pidfile = folder / "rsyslogd.pid"
        work = folder / "work"
        work.mkdir(exist_ok=True)
        self.conf.write_text(
            f"""
global(
  workDirectory="{work}"
  maxMessageSize="64k"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{self.certs.ca}"
  defaultNetstreamDriverCertFile="{self.certs.cert}"
  defaultNetstreamDriverKeyFile="{self.certs.key}"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="fields" type="string"
         string="%app-name%\\t%msgid%\\t%structured-data%\\t%msg%\\n")
action(type="omfile" file="{self.output}" template="fields")
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Rsyslog:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_listening(self.port, self.process, self.log)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def lines(self) -> list[SyslogLine]:
        if not self.output.exists():
            return []
        found = []
        for line in self.output.read_text().splitlines():
            app, msgid, structured, msg = line.split("\t", 3)
            found.append(SyslogLine(app, msgid, structured, json.loads(msg)))
        return found


@dataclass
class Delivery:
    """One request the webhook receiver got."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["events"])


@dataclass
class WebhookReceiver:
    """An HTTPS server on loopback that checks X-Keyward-Signature as the README says."""

    folder: Path
    secret: bytes = b""
    status: int = 200
    # Hold the request with this number (1-based) until `release` is set.
    hold_request: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.certs = make_certs(self.folder / "certs")
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = receiver.verify(headers, body)
                status = receiver.status if ok else 401
                with receiver.lock:
                    receiver.deliveries.append(Delivery(headers, body, ok, status))
                    number = len(receiver.deliveries)
                if number == receiver.hold_request:
                    receiver.held.set()
                    receiver.release.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certs.cert, self.certs.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}/siem/keyward?source=acme"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        """The receiver's side of the signature, exactly as the README describes it."""
        timestamp = headers.get("x-keyward-timestamp", "")
        given = headers.get("x-keyward-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False
        expected = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(f"sha256={expected.hexdigest()}", given)

    def __enter__(self) -> WebhookReceiver:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        """The events of every signed request answered 2xx (or about to be)."""
        with self.lock:
            return [
                e for d in self.deliveries if d.verified and 200 <= d.status < 300 for e in d.events
            ]
