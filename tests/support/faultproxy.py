"""A TCP proxy that misbehaves on request: the network between Keyward and a server.

Toxiproxy is not installable from the registries the suite reaches, so this is
the small part of it the fault tests need, in the standard library. It listens
on 127.0.0.1 (a free port) and forwards every connection to one upstream
host:port; TLS passes through untouched. At any moment a test can make it:

- `heal()`: forward bytes as they come (the start state);
- `add_latency(seconds, per="chunk" | "connection")`: delay each chunk, or
  each new connection once before it reaches the upstream;
- `stall()`: accept connections and hold them: no byte moves either way
  until healed (a server that accepts and never answers);
- `cut()`: reset every open connection (RST), a one-off;
- `refuse()`: accept each new connection and reset it at once (counted,
  unlike a closed port);
- `down()`: close the listening socket (the kernel refuses: nothing counted);
  `heal()` listens again on the same port;
- `trip_after(chunks=n, deliver=...)`: forward `n - 1` more client chunks, then
  cut everything and refuse from then on, the n-th chunk forwarded (its answer
  lost) or dropped (the request lost). A fault at a point of the traffic
  rather than of the clock.

Counts: `connections` accepted, `chunks_up` forwarded to the upstream, and
`faults` injected by kind (each refused, cut or stalled connection, each
delayed chunk or connection, each trip, each time the port went down). Every
proxy adds its faults to `TOTALS`, which the suite prints at its end.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import Counter
from typing import Literal

# Faults injected by every proxy of this run, by kind (printed at the end of the suite).
TOTALS: Counter[str] = Counter()
_totals_lock = threading.Lock()

_POLL = 0.02  # how often a pump looks at the mode while it has nothing to move


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the peer sees `connection reset`."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: the client's socket and the upstream's."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()
        self.stalled = False

    def close(self, *, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """See the module docstring. Use as a context manager."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._mode: Literal["pass", "stall", "refuse"] = "pass"
        self._latency = 0.0
        self._latency_per: Literal["chunk", "connection"] = "chunk"
        self._trip_at: int | None = None
        self._trip_deliver = False
        self._muted = False  # a trip delivered its chunk: answers are lost until the cut
        self._settled = threading.Event()  # clear while a trip is cutting: heal waits for it
        self._settled.set()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.connections = 0
        self.chunks_up = 0
        self.faults: Counter[str] = Counter()

    # -- life ------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopping.set()
        self._stop_listening()
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close(reset=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, scheme: str) -> str:
        return f"{scheme}://{self.host}:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(_POLL * 5)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"faultproxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=2)
            self._acceptor = None

    # -- faults ----------------------------------------------------------------------
    def _count(self, kind: str, n: int = 1) -> None:
        self.faults[kind] += n
        with _totals_lock:
            TOTALS[kind] += n

    def heal(self) -> None:
        """Forward again, listening again if `down()` closed the port."""
        # A trip still cutting would otherwise reset the connections made after the heal.
        self._settled.wait(timeout=5)
        with self._lock:
            self._mode = "pass"
            self._latency = 0.0
            self._trip_at = None
            for link in self._links:
                link.stalled = False
        if self._listener is None and not self._stopping.is_set():
            self._listen()

    def add_latency(self, seconds: float, *, per: Literal["chunk", "connection"] = "chunk") -> None:
        if seconds < 0:
            raise ValueError("latency is zero or more seconds")
        with self._lock:
            self._latency, self._latency_per = float(seconds), per

    def stall(self) -> None:
        with self._lock:
            self._mode = "stall"

    def refuse(self) -> None:
        with self._lock:
            self._mode = "refuse"

    def cut(self) -> int:
        """Reset every open connection now; how many."""
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close(reset=True)
        if links:
            self._count("cut", len(links))
        return len(links)

    def down(self) -> None:
        """Stop listening: new connections are refused by the kernel. Open ones are reset."""
        self._stop_listening()
        self.cut()
        self._count("down")

    def trip_after(self, *, chunks: int, deliver: bool = False) -> None:
        """After `chunks` more client chunks, cut everything and refuse new connections."""
        if chunks < 1:
            raise ValueError("trip after one chunk or more")
        with self._lock:
            self._trip_at = self.chunks_up + chunks
            self._trip_deliver = deliver

    @property
    def tripped(self) -> bool:
        return self.faults["trip"] > 0

    # -- plumbing --------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                mode = self._mode
            if mode == "refuse":
                _reset(client)
                self._count("refused")
                continue
            link = _Link(client)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._serve, args=(link,), daemon=True).start()

    def _wait_while_stalled(self, link: _Link) -> bool:
        """Hold the link while the proxy stalls; False if it closed meanwhile."""
        while not link.closed.is_set():
            with self._lock:
                stalled = self._mode == "stall" or link.stalled
                first = stalled and not link.stalled
                link.stalled = stalled
            if not stalled:
                return True
            if first:
                self._count("stalled")
            time.sleep(_POLL)
        return False

    def _serve(self, link: _Link) -> None:
        if not self._wait_while_stalled(link):
            return
        with self._lock:
            delay = self._latency if self._latency_per == "connection" else 0.0
        if delay:
            self._count("latency")
            time.sleep(delay)
        try:
            link.upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            # The server itself is away: the client sees its connection reset.
            self._drop(link, reset=True)
            return
        link.upstream.settimeout(None)
        threading.Thread(
            target=self._pump, args=(link, link.upstream, link.client, False), daemon=True
        ).start()
        self._pump(link, link.client, link.upstream, True)

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, up: bool) -> None:
        while not link.closed.is_set():
            if not self._wait_while_stalled(link):
                return
            try:
                readable, _, _ = select.select([src], [], [], _POLL)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            with self._lock:
                if self._mode == "stall" or link.stalled:
                    continue  # leave the bytes unread until healed
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            trip = False
            with self._lock:
                if up:
                    self.chunks_up += 1
                    if self._trip_at is not None and self.chunks_up >= self._trip_at:
                        trip, deliver = True, self._trip_deliver
                        self._trip_at = None
                        self._mode = "refuse"
                        self._muted = True
                        self._settled.clear()
                delay = self._latency if self._latency_per == "chunk" else 0.0
            if trip:
                self._count("trip")
                if deliver:
                    with contextlib.suppress(OSError):
                        dst.sendall(data)
                    time.sleep(0.05)  # the server acts on it; its answer is lost
                self.cut()
                with self._lock:
                    self._muted = False
                self._settled.set()
                return
            if delay:
                self._count("latency")
                time.sleep(delay)
            with self._lock:
                if self._muted and not up:
                    continue
            try:
                dst.sendall(data)
            except OSError:
                break
        self._drop(link, reset=False)

    def _drop(self, link: _Link, *, reset: bool) -> None:
        with self._lock:
            self._links.discard(link)
        link.close(reset=reset)
