"""What streaming needs from higher layers, filled in by them at startup.

Audit is the lowest layer: it cannot import the vault that seals secrets
under the vendor root key, nor the address checks every connection a tenant
configures goes through. Keys registers both in its `AppConfig.ready()`, so
the webhook secret is sealed like every other credential and a destination
is checked by the same code as a KMIP server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# (purpose, owner, value) -> stored bytes; (purpose, owner, stored) -> value.
Seal = Callable[[str, str, bytes], bytes]
Unseal = Callable[[str, str, bytes], bytes]
# (host, port, allowed networks) -> the addresses to connect to; raises ValueError
# with a message for the person who entered the host.
CheckAddress = Callable[[str, int, Sequence[str]], list[str]]


@dataclass(frozen=True)
class Hooks:
    seal: Seal
    unseal: Unseal
    check_address: CheckAddress


_hooks: Hooks | None = None


def register(hooks: Hooks) -> None:
    global _hooks
    _hooks = hooks


def hooks() -> Hooks:
    if _hooks is None:
        raise RuntimeError("audit streaming: the keys app has not registered its hooks")
    return _hooks
