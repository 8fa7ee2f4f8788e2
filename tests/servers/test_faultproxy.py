"""The fault proxy itself, against a loopback echo server (no database, a few seconds)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.faultproxy import TOTALS, FaultProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """An echo server: each connection gets back what it sends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()
    stop.set()
    listener.close()
    thread.join()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*echo) as proxy:
        yield proxy


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def round_trip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_it_forwards_both_ways_and_counts_connections(proxy: FaultProxy) -> None:
    for _ in range(3):
        with connect(proxy) as sock:
            assert round_trip(sock, b"x" * 100_000) == b"x" * 100_000
    assert proxy.connections == 3
    assert proxy.chunks_up >= 3
    assert not proxy.faults


def test_latency_per_chunk_and_per_connection_delays_the_answer(proxy: FaultProxy) -> None:
    proxy.add_latency(0.3)
    with connect(proxy) as sock:
        started = time.monotonic()
        assert round_trip(sock) == b"ping"
        assert time.monotonic() - started >= 0.3
    proxy.add_latency(0.3, per="connection")
    started = time.monotonic()
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"
    assert time.monotonic() - started >= 0.3
    assert proxy.faults["latency"] >= 2
    with pytest.raises(ValueError, match="zero or more"):
        proxy.add_latency(-1)


def test_a_stall_holds_new_and_open_connections_until_healed(proxy: FaultProxy) -> None:
    before = TOTALS["stalled"]
    held = connect(proxy, timeout=0.3)
    assert round_trip(held) == b"ping"
    proxy.stall()
    held.sendall(b"one")
    with pytest.raises(TimeoutError):
        held.recv(10)
    with connect(proxy, timeout=0.3) as new:  # accepted: the TCP handshake completes
        new.sendall(b"two")
        with pytest.raises(TimeoutError):
            new.recv(10)
    proxy.heal()
    held.settimeout(2)
    assert held.recv(10) == b"one"  # held bytes move again once healed
    held.close()
    assert proxy.faults["stalled"] == 2
    assert TOTALS["stalled"] - before == 2


def test_cut_resets_open_connections_and_the_next_ones_work(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    assert round_trip(sock) == b"ping"
    assert proxy.cut() == 1
    with pytest.raises(OSError):  # reset by peer (or a read of nothing on a broken pipe)
        sock.sendall(b"again")
        if not sock.recv(10):
            raise ConnectionResetError
    sock.close()
    with connect(proxy) as fresh:
        assert round_trip(fresh) == b"ping"
    assert proxy.faults["cut"] == 1


def test_refuse_resets_each_new_connection_and_counts_it(proxy: FaultProxy) -> None:
    proxy.refuse()
    for _ in range(3):
        with contextlib.suppress(OSError), connect(proxy) as sock:
            sock.sendall(b"hello")
            assert sock.recv(10) == b""  # never an answer
    deadline = time.monotonic() + 2
    while proxy.faults["refused"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.faults["refused"] == 3
    proxy.heal()
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"


def test_down_closes_the_port_and_heal_listens_again_on_it(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.heal()
    assert proxy.port == port
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"
    assert proxy.faults["down"] == 1


@pytest.mark.parametrize("deliver", [False, True])
def test_a_trip_cuts_at_a_chosen_chunk_then_refuses(proxy: FaultProxy, deliver: bool) -> None:
    sock = connect(proxy)
    proxy.trip_after(chunks=3, deliver=deliver)
    assert round_trip(sock, b"a") == b"a"
    assert round_trip(sock, b"b") == b"b"
    sock.sendall(b"c")  # the third chunk: the connection is cut, no answer
    with contextlib.suppress(OSError):
        assert sock.recv(10) == b""
    sock.close()
    assert proxy.tripped
    with contextlib.suppress(OSError), connect(proxy) as refused:
        refused.sendall(b"d")
        assert refused.recv(10) == b""
    proxy.heal()
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"
    with pytest.raises(ValueError, match="one chunk"):
        proxy.trip_after(chunks=0)


def test_an_upstream_that_is_away_resets_the_client(echo: tuple[str, int]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with FaultProxy("127.0.0.1", closed) as proxy:
        got = b""
        with contextlib.suppress(OSError), connect(proxy) as sock:  # reset, maybe at once
            sock.sendall(b"x")
            got = sock.recv(10)
        assert got == b""
        assert proxy.connections == 1
