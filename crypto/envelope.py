"""Envelope encryption for one process: the public encrypt/decrypt API. Framework-free.

Everything Django-specific (where tenant state, wrapped DEKs and counters
live) is injected, so this module is tested and benchmarked on its own.

Per tenant the envelope keeps a small state (key epoch, current DEK, status)
that it re-reads at most every `state_interval` seconds. When the epoch moved
(a revoke, a restore, a rotation confirmed), the tenant's cached DEKs are
dropped; with the default 0.5 s that happens within a second in every process.

Encryptions are counted per DEK without a database write per encryption: each
process reserves blocks of `block` encryptions (`reserve`), spends them in
memory and reports what it really used (`take_counts`). The limit is enforced
on reservations, so a crash can only over-count, never let a DEK exceed it.
Only a DEK's format 2 field key encrypts, so the count of a DEK is the count
of one AES-GCM key: the one the random-nonce limit is about.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag

from crypto.ciphertext import (
    FORMAT_CURRENT,
    FORMAT_V1,
    FORMAT_V2,
    HEADER,
    HEADER_SIZE,
    NONCE_SIZE,
    OVERHEAD,
    UNAUTHENTIC,
    CiphertextMalformed,
    CiphertextUnauthentic,
    FieldKeys,
    binding,
    binding_prefix,
    dek_id_of,
    header,
    next_nonce,
    open_,
    seal,
)
from crypto.dekcache import DekCache

ACTIVE = "active"
_unpack_header = HEADER.unpack_from


class EnvelopeError(Exception):
    pass


class KeyRevoked(EnvelopeError):
    """The tenant's key was revoked or destroyed: nothing of it decrypts."""


class NoDataKey(EnvelopeError):
    """The tenant has no active data key."""


class DataKeyExhausted(EnvelopeError):
    """The current DEK reached its encryption limit; a rotation was requested."""


@dataclass(frozen=True)
class TenantKeyState:
    epoch: int
    current_dek_id: int | None
    status: str = ACTIVE  # ACTIVE, or the reason nothing decrypts ("revoked", "destroyed")


class StateSource(Protocol):
    def fetch(self, tenant_id: str) -> TenantKeyState: ...


Reserve = Callable[[str, int, int], int]  # (tenant id, DEK id, wanted) -> granted
Exhausted = Callable[[str, int], None]  # (tenant id, DEK id)

Item = tuple[str, str, str, bytes]  # (kind, field, record id, plaintext or ciphertext)


class _Tenant:
    __slots__ = ("checked", "state")

    def __init__(self, state: TenantKeyState, checked: float) -> None:
        self.state = state
        self.checked = checked


class Envelope:
    def __init__(
        self,
        *,
        cache: DekCache,
        states: StateSource,
        reserve: Reserve,
        on_exhausted: Exhausted,
        state_interval: float = 0.5,
        block: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self._states = states
        self._reserve = reserve
        self._on_exhausted = on_exhausted
        self._interval = state_interval
        self._block = block
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._budget: dict[int, int] = {}
        self._used: dict[int, int] = {}
        self._count_lock = threading.Lock()
        self._prefixes: dict[tuple[int, int, str, str, str], tuple[bytes, bytes]] = {}

    def __repr__(self) -> str:
        return f"<Envelope {len(self._tenants)} tenants, {self.cache!r}>"

    # -- tenant state ----------------------------------------------------
    def state(self, tenant_id: str) -> TenantKeyState:
        cached = self._tenants.get(tenant_id)
        now = self._clock()
        if cached is not None and now - cached.checked < self._interval:
            return cached.state
        fresh = self._states.fetch(tenant_id)
        if cached is not None and (fresh.epoch != cached.state.epoch or fresh.status != ACTIVE):
            self.cache.drop_tenant(tenant_id)
        self._tenants[tenant_id] = _Tenant(fresh, now)
        return fresh

    def prime(self, tenant_id: str, state: TenantKeyState) -> None:
        """Use this state now, in this process (it has just changed it itself)."""
        cached = self._tenants.get(tenant_id)
        if cached is not None and cached.state.epoch != state.epoch:
            self.cache.drop_tenant(tenant_id)
        self._tenants[tenant_id] = _Tenant(state, self._clock())

    def forget(self, tenant_id: str) -> None:
        """Drop this process's DEKs and state for a tenant now (after a local revoke)."""
        self._tenants.pop(tenant_id, None)
        self.cache.drop_tenant(tenant_id)

    def _usable(self, tenant_id: str) -> TenantKeyState:
        state = self.state(tenant_id)
        if state.status != ACTIVE:
            raise KeyRevoked(f"the tenant's key is {state.status}: its data cannot be decrypted")
        return state

    def current_key(self, tenant_id: str) -> tuple[int, FieldKeys]:
        """The DEK new data is written under, for bulk jobs that call `seal` themselves."""
        state = self._usable(tenant_id)
        if state.current_dek_id is None:
            raise NoDataKey("the tenant has no active data key")
        return state.current_dek_id, self.cache.get(tenant_id, state.current_dek_id)

    def key_for(self, tenant_id: str, dek_id: int) -> FieldKeys:
        self._usable(tenant_id)
        return self.cache.get(tenant_id, dek_id)

    # -- counting --------------------------------------------------------
    def spend(self, tenant_id: str, dek_id: int, n: int) -> None:
        with self._count_lock:
            left = self._budget.get(dek_id, 0) - n
            if left < 0:
                granted = self._reserve(tenant_id, dek_id, max(self._block, n))
                left += granted
                if left < 0:
                    self._budget[dek_id] = left + n
                    self._on_exhausted(tenant_id, dek_id)
                    raise DataKeyExhausted(
                        "the data key reached its encryption limit; it is being rotated"
                    )
            self._budget[dek_id] = left
            self._used[dek_id] = self._used.get(dek_id, 0) + n

    def take_counts(self) -> dict[int, int]:
        """Encryptions done since the last call, per DEK id (for a batched flush)."""
        with self._count_lock:
            used, self._used = self._used, {}
        return used

    # -- the API -----------------------------------------------------------
    def _aad_prefix(
        self, version: int, dek_id: int, tenant_id: str, kind: str, field: str
    ) -> tuple[bytes, bytes]:
        """(header, header + binding prefix) of a format, a DEK and a (tenant, kind, field).

        Memoised. Encryption asks for FORMAT_CURRENT only; other formats are read.
        """
        key = (version, dek_id, tenant_id, kind, field)
        found = self._prefixes.get(key)
        if found is None:
            if len(self._prefixes) > 50_000:
                self._prefixes.clear()
            head = HEADER.pack(version, dek_id)
            found = self._prefixes[key] = (head, head + binding_prefix(tenant_id, kind, field))
        return found

    def _hot_key(self, tenant_id: str) -> tuple[int, FieldKeys]:
        """The current DEK without any call that can block, when everything is fresh."""
        cached = self._tenants.get(tenant_id)
        now = self._clock()
        if cached is not None and now - cached.checked < self._interval:
            state = cached.state
            if state.status == ACTIVE and state.current_dek_id is not None:
                keys = self.cache.hit((tenant_id, state.current_dek_id), now)
                if keys is not None:
                    return state.current_dek_id, keys
        return self.current_key(tenant_id)

    def encrypt(self, tenant_id: str, kind: str, field: str, record_id: str, value: bytes) -> bytes:
        dek_id, keys = self._hot_key(tenant_id)
        with self._count_lock:
            left = self._budget.get(dek_id, 0) - 1
            if left >= 0:
                self._budget[dek_id] = left
                self._used[dek_id] = self._used.get(dek_id, 0) + 1
        if left < 0:
            self.spend(tenant_id, dek_id, 1)
        found = self._prefixes.get((FORMAT_CURRENT, dek_id, tenant_id, kind, field))
        head, prefix = found or self._aad_prefix(FORMAT_CURRENT, dek_id, tenant_id, kind, field)
        rid = record_id.encode()
        nonce = next_nonce()
        aad = prefix + len(rid).to_bytes(2, "big") + rid
        return head + nonce + keys.sealing.encrypt(nonce, value, aad)

    def decrypt(self, tenant_id: str, kind: str, field: str, record_id: str, blob: bytes) -> bytes:
        if len(blob) < OVERHEAD:
            raise CiphertextMalformed(f"ciphertext is truncated ({len(blob)} bytes)")
        version, dek_id = _unpack_header(blob)
        if version != FORMAT_V2 and version != FORMAT_V1:
            raise CiphertextMalformed(f"unknown ciphertext format {version}")
        cached = self._tenants.get(tenant_id)
        now = self._clock()
        keys = None
        if (
            cached is not None
            and now - cached.checked < self._interval
            and cached.state.status == ACTIVE
        ):
            keys = self.cache.hit((tenant_id, dek_id), now)
        if keys is None:
            keys = self.key_for(tenant_id, dek_id)
        # The blob's own format picks the key, and its header (format byte
        # included) is in the associated data: relabelling a blob with the
        # other format changes both, so it fails to authenticate.
        found = self._prefixes.get((version, dek_id, tenant_id, kind, field))
        prefix = (found or self._aad_prefix(version, dek_id, tenant_id, kind, field))[1]
        rid = record_id.encode()
        try:
            return keys.opening[version].decrypt(
                blob[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
                blob[HEADER_SIZE + NONCE_SIZE :],
                prefix + len(rid).to_bytes(2, "big") + rid,
            )
        except InvalidTag:
            raise CiphertextUnauthentic(UNAUTHENTIC) from None

    def encrypt_many(self, tenant_id: str, items: Sequence[Item]) -> list[bytes]:
        dek_id, keys = self.current_key(tenant_id)
        self.spend(tenant_id, dek_id, len(items))
        head = header(dek_id)
        return [
            seal(keys, head, value, binding(tenant_id, kind, field, record_id))
            for kind, field, record_id, value in items
        ]

    def decrypt_many(self, tenant_id: str, items: Sequence[Item]) -> list[bytes]:
        self._usable(tenant_id)
        by_dek: dict[int, FieldKeys] = {}
        out = []
        for kind, field, record_id, blob in items:
            dek_id = dek_id_of(blob)
            keys = by_dek.get(dek_id)
            if keys is None:
                keys = by_dek[dek_id] = self.cache.get(tenant_id, dek_id)
            out.append(open_(keys, blob, binding(tenant_id, kind, field, record_id)))
        return out
