"""Data keys for objects: the plaintext DEK bytes that crypto.segments derives subkeys from.

The envelope's cache holds AES-GCM objects, not key bytes, and the object
format needs the bytes (HKDF per object). This module asks the envelope for
the tenant's key state (revocation, epoch, current DEK: the same source every
process uses) and unwraps through the same loader as the envelope
(`keys.runtime._load_dek`), keeping the bytes in this process's memory only,
for the tenant's DEK cache TTL, and forgetting them when the epoch moves
(revoke, restore, a confirmed rotation). Nothing unwrapped is ever stored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from crypto.envelope import ACTIVE, KeyRevoked, NoDataKey
from keys.runtime import _load_dek, envelope


@dataclass(frozen=True)
class ObjectKey:
    dek_id: int
    material: bytes

    def __repr__(self) -> str:
        return f"ObjectKey(dek_id={self.dek_id}, <{len(self.material)} bytes>)"


_lock = threading.Lock()
# (tenant id, DEK id) -> (material, expires at (monotonic), key epoch it was loaded under)
_cache: dict[tuple[str, int], tuple[bytes, float, int]] = {}
_MAX_ENTRIES = 1000


def _epoch(tenant_id: str) -> int:
    state = envelope().state(tenant_id)
    if state.status != ACTIVE:
        raise KeyRevoked(f"the tenant's key is {state.status}: its data cannot be decrypted")
    return state.epoch


def dek_material(tenant_id: str, dek_id: int) -> bytes:
    """The plaintext of one of the tenant's DEKs (KeyRevoked, KeyUnavailable... as the envelope)."""
    epoch = _epoch(tenant_id)
    now = time.monotonic()
    with _lock:
        found = _cache.get((tenant_id, dek_id))
    if found is not None and found[1] > now and found[2] == epoch:
        return found[0]
    loaded = _load_dek(tenant_id, dek_id)
    with _lock:
        if len(_cache) >= _MAX_ENTRIES:
            _cache.clear()
        _cache[(tenant_id, dek_id)] = (loaded.material, now + loaded.ttl, epoch)
    return loaded.material


def current_object_key(tenant_id: str) -> ObjectKey:
    """The DEK new objects are written under: the tenant's current active DEK."""
    state = envelope().state(tenant_id)
    if state.current_dek_id is None:
        raise NoDataKey("the tenant has no active data key")
    return ObjectKey(state.current_dek_id, dek_material(tenant_id, state.current_dek_id))


def forget(tenant_id: str | None = None) -> None:
    """Drop cached DEK bytes (all, or one tenant's); tests use it as a restart would."""
    with _lock:
        for key in [k for k in _cache if tenant_id is None or k[0] == tenant_id]:
            del _cache[key]
