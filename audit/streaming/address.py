"""A destination's address, checked like every address a tenant gives.

At configuration and again at every delivery (a name may resolve elsewhere
by then): no loopback, private, link-local or otherwise non-public address,
unless the operator allows its network in KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from audit.streaming.hooks import hooks


class InvalidDestination(ValueError):
    """The destination is malformed or not allowed; `field` names what to fix."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def allowed_networks(tenant: Any) -> tuple[str, ...]:
    """The operator's bare CIDRs, and those given to this tenant ("<slug>:<CIDR>")."""
    allowed = []
    for entry in settings.KEYWARD_AUDIT_STREAM_ALLOWED_NETWORKS:
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            slug, _, network = entry.partition(":")
            if slug == tenant.slug:
                allowed.append(network)
        else:
            allowed.append(entry)
    return tuple(allowed)


def checked_addresses(tenant: Any, host: str, port: int, *, field: str = "host") -> list[str]:
    """The addresses `host` may be reached at, each checked; raise InvalidDestination."""
    if not host:
        raise InvalidDestination("Enter the host name or IP address.", field=field)
    if "://" in host or any(ch in host for ch in "/?#@\\") or any(ch.isspace() for ch in host):
        raise InvalidDestination(
            f"Enter only the host name, like siem.example.com, without a scheme, user, path "
            f"or spaces: {host[:80]!r}",
            field=field,
        )
    if not 1 <= port <= 65535:
        raise InvalidDestination(f"The port must be 1 to 65535, not {port}.", field="port")
    try:
        return hooks().check_address(host, port, allowed_networks(tenant))
    except ValueError as exc:
        message = str(exc).removeprefix("host: ").removeprefix("port: ")
        raise InvalidDestination(message, field=field) from None


def webhook_parts(url: str) -> tuple[str, int]:
    """(host, port) of an https:// URL without credentials; raise InvalidDestination."""
    if any(ch.isspace() for ch in url) or not url.isascii() or not url.isprintable():
        raise InvalidDestination(
            "The URL must not contain spaces, control or non-ASCII characters "
            "(use the xn-- form of an internationalized name).",
            field="url",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidDestination(f"The URL is not valid ({exc}).", field="url") from None
    if parts.scheme != "https":
        raise InvalidDestination(
            "A webhook must be an https:// URL: events are never sent unencrypted.", field="url"
        )
    if not parts.hostname:
        raise InvalidDestination("The URL has no host name.", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidDestination(
            "Do not put credentials in the URL: every request is signed with the secret "
            "Keyward shows you once.",
            field="url",
        )
    if parts.fragment:
        raise InvalidDestination("The URL must not have a #fragment.", field="url")
    return parts.hostname, port or 443
