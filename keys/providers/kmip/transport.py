"""The connection to a KMIP server: mutual TLS, an SSRF-checked socket, PyKMIP on it.

Certificates and keys reach OpenSSL through memory-only files; every connection
resolves and checks the host again and connects to the address it checked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keys.providers.kmip.config import InvalidKmipConfig, KmipConfig, checked_addresses
from keys.providers.kmip.errors import KmipConnectError, KmipTlsError, tls_problem
from keys.providers.kmip.pykmip import KMIPProtocol, KMIPProxy, KMIPVersion, ProxyKmipClient

IDLE_SECONDS = 60.0  # reconnect rather than trust a connection idle this long

# PyKMIP's KMIPProtocol logs every message in hex at DEBUG, plaintext included.
_WIRE_LOG = logging.Logger("keyward.kmip.wire", level=logging.CRITICAL)


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    """A path to `data` in anonymous memory (never on disk), valid inside the block."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def tls_context(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, passphrase: bytes | None
) -> ssl.SSLContext:
    """TLS 1.2+, the customer's CA only, host name checked, our client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The certificates only, as canonical PEM: OpenSSL wants ASCII text, and
    # whatever else the uploaded file holds (comments, stray bytes) is not trust.
    cadata = "".join(
        cert.public_bytes(serialization.Encoding.PEM).decode()
        for cert in x509.load_pem_x509_certificates(ca_pem)
    )
    context.load_verify_locations(cadata=cadata)
    with (
        _memory_file("kmip-client-cert", cert_pem) as certfile,
        _memory_file("kmip-client-key", key_pem) as keyfile,
    ):
        # An empty password rather than None: OpenSSL would otherwise prompt on a terminal.
        context.load_cert_chain(certfile, keyfile, password=passphrase or b"")
    return context


class _Proxy(KMIPProxy):
    """PyKMIP's proxy with its encoding, on a socket that `connect` makes and verifies."""

    def __init__(self, connect: Callable[[], ssl.SSLSocket], **kwargs: Any) -> None:
        super().__init__(config_file="/dev/null", **kwargs)
        self._connect = connect

    def open(self) -> None:
        self.socket = self._connect()
        self.protocol = KMIPProtocol(self.socket)
        self.protocol.logger = _WIRE_LOG


@dataclass
class Connection:
    """PyKMIP's client on an open socket, the address it reached, and when it was last used."""

    client: Any
    sock: ssl.SSLSocket
    peer: str
    last_used: float


def _connect(
    config: KmipConfig,
    tls: ssl.SSLContext,
    *,
    timeout: float,
    resolve: Callable[[str, int], list[str]] | None,
) -> tuple[ssl.SSLSocket, str]:
    """A TLS socket to the first checked address that answers, and that address."""
    host, port = config.host, config.port
    try:
        addresses = checked_addresses(
            host,
            port,
            allow_private=config.allow_private,
            resolve=resolve,
            allowed_networks=config.allowed_networks,
        )
    except InvalidKmipConfig as exc:
        raise KmipConnectError(f"KMIP server {config.address}: {exc}") from None
    failures: list[str] = []
    for address in addresses:
        try:
            raw = socket.create_connection((address, port), timeout=timeout)
        except TimeoutError:
            failures.append(f"{address}: timed out after {timeout:g} s")
            continue
        except OSError as exc:
            failures.append(f"{address}: {exc.strerror or type(exc).__name__}")
            continue
        try:
            server_name = host[1:-1] if host.startswith("[") else host
            sock = tls.wrap_socket(raw, server_hostname=server_name)
        except ssl.SSLError as exc:
            raw.close()
            problem = tls_problem(exc, host)
            raise KmipTlsError(f"KMIP server {config.address}: {problem}", problem) from None
        except OSError as exc:
            raw.close()
            failures.append(
                f"{address}: the connection failed during the TLS handshake "
                f"({exc.strerror or type(exc).__name__})"
            )
            continue
        sock.settimeout(timeout)
        return sock, address
    raise KmipConnectError(
        f"could not connect to the KMIP server {config.address}: " + "; ".join(failures)
    )


def open_connection(
    config: KmipConfig,
    tls: ssl.SSLContext,
    *,
    password: str | None,
    version: KMIPVersion,
    timeout: float,
    resolve: Callable[[str, int], list[str]] | None,
) -> Connection:
    """A new connection: PyKMIP's client, speaking `version`, on a socket made here."""
    holder: dict[str, str] = {}

    def connect() -> ssl.SSLSocket:
        sock, holder["peer"] = _connect(config, tls, timeout=timeout, resolve=resolve)
        return sock

    client = ProxyKmipClient(
        hostname=config.host,
        port=config.port,
        config_file="/dev/null",
        kmip_version=version,
    )
    client.proxy = _Proxy(
        connect,
        host=config.host,
        port=config.port,
        username=config.username,
        password=password,
        kmip_version=version,
    )
    # proxy.open() rather than client.open(), which logs each failure at ERROR.
    client.proxy.open()
    client._is_open = True
    return Connection(client, client.proxy.socket, holder["peer"], time.monotonic())


def closed_by_peer(sock: ssl.SSLSocket) -> bool:
    """True when an idle connection has something to read: the server closed it (or alerted)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable) or sock.pending() > 0
