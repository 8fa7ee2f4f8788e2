"""Secrets Keyward must keep (wrapping private keys, uploaded key material,
later customer credentials), stored only wrapped under the vendor root key.

Each secret is bound to what it is for and whose it is, so a wrapped value
copied to another row or purpose does not unwrap.
"""

from __future__ import annotations

from dataclasses import dataclass

from keys.rootkey import local_provider


@dataclass(frozen=True)
class Sealed:
    blob: bytes
    root_version: str

    def __repr__(self) -> str:
        return f"Sealed({self.root_version}, {len(self.blob)} bytes)"


def _context(purpose: str, owner: str) -> dict[str, str]:
    return {"keyward:purpose": purpose, "keyward:owner": owner}


def seal(*, purpose: str, owner: str, value: bytes) -> Sealed:
    wrapped = local_provider().wrap(value, _context(purpose, owner))
    return Sealed(wrapped.blob, wrapped.version)


def unseal(*, purpose: str, owner: str, sealed: Sealed) -> bytes:
    return local_provider().unwrap(sealed.blob, _context(purpose, owner), sealed.root_version)
