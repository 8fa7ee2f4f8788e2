"""What the customer configures for a KMIP server, and the checks on it.

The server's host and port (with the SSRF checks every connection repeats),
the key and account names, and the `Invalid*` errors that name the field to fix.
The uploaded TLS material is checked in `material`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_MAX_TEXT = 256


class InvalidKmipConfig(ValueError):
    """A KMIP setting is malformed or not allowed; the message names the field and the fix."""


class InvalidKmipMaterial(InvalidKmipConfig):
    """An uploaded certificate, key or passphrase is unusable.

    `field` is "ca_cert", "client_cert", "client_key" or "passphrase".
    """

    field: str

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


def _show(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _host_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _check_host_syntax(host: object) -> str:
    """The host as given, if it is a DNS name or an IP literal; raise InvalidKmipConfig."""
    if not isinstance(host, str):
        raise InvalidKmipConfig(f"host: must be text, not {type(host).__name__}")
    if not host:
        raise InvalidKmipConfig("host: enter the KMIP server's host name or IP address")
    if any(ch.isspace() for ch in host):
        raise InvalidKmipConfig(f"host: must not contain spaces or line breaks: {_show(host)}")
    if "://" in host or any(ch in host for ch in "/?#@\\"):
        raise InvalidKmipConfig(
            f"host: enter only the host name, like kmip.example.com, without a scheme, "
            f"user or path: {_show(host)}"
        )
    if _host_literal(host) is not None:
        return host
    if ":" in host:
        raise InvalidKmipConfig(
            f"host: enter the port in the port field, not after the host name: {_show(host)}"
        )
    if not host.isascii():
        raise InvalidKmipConfig(
            f"host: {_show(host)} is not ASCII; enter an internationalized name in its "
            "xn-- (punycode) form"
        )
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise InvalidKmipConfig(
            f"host: {_show(host)} is not a valid host name (labels of letters, digits and "
            "hyphens, separated by dots) or IP address"
        )
    if name.replace(".", "").isdigit():
        raise InvalidKmipConfig(f"host: {_show(host)} is not a valid IPv4 address")
    return host


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise InvalidKmipConfig(f"port: must be a whole number, not {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise InvalidKmipConfig(f"port: must be 1 to 65535 (KMIP uses 5696), not {port}")
    return port


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be connected to, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return _refusal(mapped)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (such as a cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private network address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "an address that is not publicly routable"
    return None


def _default_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _networks(allowed: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(network, strict=False) for network in allowed]
    except (TypeError, ValueError):
        raise InvalidKmipConfig(
            f"allowed_networks: {list(allowed)!r} must be networks like 10.20.0.0/16"
        ) from None


def checked_addresses(
    host: str,
    port: int,
    *,
    allow_private: bool,
    resolve: Callable[[str, int], list[str]] | None = None,
    allowed_networks: Sequence[str] = (),
    what: str = "a KMIP server",
) -> list[str]:
    """The addresses to connect to, each checked; raise InvalidKmipConfig.

    `what` names the server in the messages: the same checks guard every
    address a tenant gives (audit stream destinations too).
    """
    _check_host_syntax(host)
    _check_port(port)
    networks = _networks(allowed_networks)
    literal = _host_literal(host)
    if literal is not None:
        found = [str(literal)]
    else:
        try:
            found = list((resolve or _default_resolve)(host, port))
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise InvalidKmipConfig(f"host: could not resolve {host!r} ({reason})") from None
        if not found:
            raise InvalidKmipConfig(f"host: could not resolve {host!r} (no addresses)")
    addresses: list[str] = []
    for text in found:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise InvalidKmipConfig(
                f"host: {host!r} resolved to {text!r}, which is not an IP address"
            ) from None
        why = _refusal(address)
        if why and any(address in network for network in networks):
            why = None  # the operator allows this network (a private link, say)
        if why and not allow_private:
            shown = host if literal is not None else f"{host} resolves to {address}, which"
            raise InvalidKmipConfig(
                f"host: {shown} is {why}; {what} must be reachable at a public "
                "address (the operator can allow private addresses for on-premises use)"
            )
        if str(address) not in addresses:
            addresses.append(str(address))
    return addresses


def validate_host(
    host: str,
    port: int,
    *,
    allow_private: bool = False,
    resolve: Callable[[str, int], list[str]] | None = None,
    allowed_networks: Sequence[str] = (),
) -> None:
    """Check a KMIP host and port as the customer entered them; raise InvalidKmipConfig.

    The host is a DNS name or an IP literal (no scheme, path or spaces) and the
    port 1 to 65535. The name is resolved (`resolve`, by default getaddrinfo)
    and refused when any address is loopback, private, link-local, multicast,
    reserved or unspecified, unless `allow_private`, or unless the address is in
    one of the operator's `allowed_networks` (CIDR). The provider repeats this
    check for every connection, and connects to the address it checked.
    """
    checked_addresses(
        host, port, allow_private=allow_private, resolve=resolve, allowed_networks=allowed_networks
    )


@dataclass(frozen=True)
class KmipConfig:
    """What the customer configures (secrets live in `KmipCredentials`)."""

    host: str
    port: int = 5696
    key_uid: str | None = None
    key_name: str = "keyward"
    username: str | None = None
    allow_private: bool = field(default=False, repr=False)
    # Private networks the operator allows (CIDR), e.g. a customer's private link.
    allowed_networks: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _check_host_syntax(self.host)
        _check_port(self.port)
        _networks(self.allowed_networks)
        if self.key_uid is not None:
            check_text("key_uid", self.key_uid, what="key unique identifier")
        check_text("key_name", self.key_name, what="key name")
        if self.username is not None:
            check_text("username", self.username, what="username")

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_text(name: str, value: object, *, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidKmipConfig(f"{name}: the {what} must be text, not {type(value).__name__}")
    if not value or len(value) > _MAX_TEXT:
        raise InvalidKmipConfig(f"{name}: the {what} must be 1 to {_MAX_TEXT} characters")
    if not value.isprintable() or value != value.strip():
        raise InvalidKmipConfig(
            f"{name}: the {what} must not contain control characters or surrounding spaces"
        )
    return value


@dataclass(frozen=True)
class KmipCredentials:
    """The uploaded TLS material and the KMIP account: none of it is ever shown."""

    ca_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    passphrase: bytes | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
