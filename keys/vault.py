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


def reseal(*, purpose: str, owner: str, sealed: Sealed) -> Sealed | None:
    """The same secret sealed under the current root key version, or None when
    it is already (root-key rotation moves every sealed secret before a version
    may be retired)."""
    if sealed.root_version == local_provider().current_version():
        return None
    value = unseal(purpose=purpose, owner=owner, sealed=sealed)
    moved = seal(purpose=purpose, owner=owner, value=value)
    del value
    return moved


def packed(sealed: Sealed) -> bytes:
    """One column's bytes for a sealed value: root version, NUL, blob."""
    return sealed.root_version.encode() + b"\0" + sealed.blob


def unpacked(stored: bytes) -> Sealed:
    root_version, _, blob = bytes(stored).partition(b"\0")
    return Sealed(blob, root_version.decode())
