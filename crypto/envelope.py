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

The per-call path (`encrypt`, `decrypt`) does no check it can skip safely and
no other: it looks up one per-tenant object (`_Hot`) whose validity ends at
the next state re-read or DEK cache refresh, whichever comes first, so the
epoch is re-read exactly as often as without it and revocation takes effect
within the same bound (tests/crypto/test_envelope.py pins both). Counting is
a next() on a per-DEK range iterator, not a lock. Nonces stay 96 random bits
from the OS (crypto.ciphertext.NoncePool, one draw per 1024): a counter per
DEK lease would be no faster in Python, and uniqueness of random nonces needs
no argument about processes, crashes or restores, only the per-key limit,
which the DEK's encryption count enforces (KEYWARD_DEK_MAX_ENCRYPTIONS, 2^31
by default, under the 2^32 of NIST SP 800-38D 8.3; DEKs also rotate every 7
days by default).
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import countOf, length_hint
from typing import Protocol, final

from cryptography.exceptions import InvalidTag

from crypto.ciphertext import (
    BODY_AT,
    BODY_OF,
    HEAD_OF,
    HEADER_SIZE,
    NONCE_OF,
    NONCES,
    OVERHEAD,
    UNAUTHENTIC,
    CiphertextUnauthentic,
    FieldKeys,
    binding_prefix,
    header,
    parse_header,
    random_nonces,
)
from crypto.dekcache import DekCache

ACTIVE = "active"


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


class Encrypt(Protocol):
    def __call__(
        self, tenant_id: str, kind: str, field: str, record_id: str, value: bytes
    ) -> bytes: ...


class Decrypt(Protocol):
    def __call__(
        self, tenant_id: str, kind: str, field: str, record_id: str, blob: bytes
    ) -> bytes: ...


class _Tenant:
    __slots__ = ("fresh_until", "state")

    def __init__(self, state: TenantKeyState, fresh_until: float) -> None:
        self.state = state
        self.fresh_until = fresh_until  # re-read the state from this clock reading on


Seal = Callable[[bytes, bytes, bytes | None], bytes]  # AESGCM.encrypt of one field key
Open = Callable[[bytes, bytes, bytes | None], bytes]  # AESGCM.decrypt of one field key

_MAX_MEMO = 1_000  # associated-data prefixes memoised per tenant


class _Hot:
    """What encrypt and decrypt need of one tenant, usable without any check until `until`.

    `until` is the earliest of the tenant state's next re-read and the good-until
    time (DekCache.lease) of every DEK entry it holds keys of. So a call on the
    fast path is valid exactly when the slow path would have served it from the
    same state and the same cache entries: the epoch is re-read no less often,
    and a dropped or expiring entry is never used past its time. An epoch
    change, `prime`, `forget` and every DekCache drop discard the whole object.

    - seal: the current DEK's format 2 key, `head` its header, `seal_prefix`
      (kind, field, length of the record id) -> the associated data up to the
      record id. Filled by the first encrypt.
    - opening: (blob header, kind, field, length of the record id) -> (the key
      of that format and DEK, the associated data up to the record id):
      looking a blob's header up checks its format and its DEK id, picks its
      key and its associated data in one step.

    The record id's length is in the key so that the associated data is one
    concatenation per call: record ids are uuids, so there is one entry per
    (kind, field) in practice.
    """

    __slots__ = (
        "budget",
        "dek_id",
        "head",
        "opening",
        "seal",
        "seal_prefix",
        "seal_until",
        "until",
    )

    def __init__(self, until: float) -> None:
        self.until = until
        # `until` once the fields below are set, -inf before: encrypt's one test.
        self.seal_until = -math.inf
        self.dek_id = 0
        self.head = b""  # empty until the first encrypt fills the fields below
        self.seal: Seal = _no_sealing_key
        self.budget = _Budget()
        self.seal_prefix: dict[tuple[str, str, int], bytes] = {}
        self.opening: dict[tuple[bytes, str, str, int], tuple[Open, bytes]] = {}


def _no_sealing_key(nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
    raise AssertionError("encrypt takes the slow path while a _Hot has no sealing key")


class _Budget:
    """The encryptions this process may still do under one DEK.

    `left` yields one item per encryption reserved and not yet done. Taking one
    is next() on a range iterator: one C call that the GIL makes atomic, so the
    per-call path counts without a lock and two threads never take the same
    unit. Refills (`Envelope.spend`) and reading the counts (`take_counts`) hold
    the envelope's count lock. `granted` is every encryption ever placed in
    `left`, so what was used is `granted - length_hint(left)`, and `reported`
    is that figure at the last take_counts.
    """

    __slots__ = ("granted", "left", "reported")

    def __init__(self) -> None:
        self.left: Iterator[int] = iter(())
        self.granted = 0
        self.reported = 0

    def used(self) -> int:
        return self.granted - length_hint(self.left)


@final  # encrypt and decrypt are closures over this instance: a subclass could not override them
class Envelope:
    encrypt: Encrypt  # see _per_field_calls
    decrypt: Decrypt

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
        self._budgets: dict[int, _Budget] = {}
        self._count_lock = threading.Lock()
        self._hot: dict[str, _Hot] = {}
        self._hot_get = self._hot.get  # the dict is cleared, never replaced
        self._hot_lock = threading.Lock()
        self._drops = 0  # bumped by every drop: a _Hot built across one is not kept
        cache.on_drop(self._drop_hot)
        self.encrypt, self.decrypt = self._per_field_calls()

    def __repr__(self) -> str:
        return f"<Envelope {len(self._tenants)} tenants, {self.cache!r}>"

    # -- tenant state ----------------------------------------------------
    def state(self, tenant_id: str) -> TenantKeyState:
        cached = self._tenants.get(tenant_id)
        now = self._clock()
        if cached is not None and now < cached.fresh_until:
            return cached.state
        fresh = self._states.fetch(tenant_id)
        if cached is not None and (fresh.epoch != cached.state.epoch or fresh.status != ACTIVE):
            self.cache.drop_tenant(tenant_id)
        self._tenants[tenant_id] = _Tenant(fresh, now + self._interval)
        return fresh

    def prime(self, tenant_id: str, state: TenantKeyState) -> None:
        """Use this state now, in this process (it has just changed it itself)."""
        cached = self._tenants.get(tenant_id)
        if cached is not None and cached.state.epoch != state.epoch:
            self.cache.drop_tenant(tenant_id)
        self._drop_hot(tenant_id)  # the current DEK may have changed within the epoch
        self._tenants[tenant_id] = _Tenant(state, self._clock() + self._interval)

    def forget(self, tenant_id: str) -> None:
        """Drop this process's DEKs and state for a tenant now (after a local revoke)."""
        self._tenants.pop(tenant_id, None)
        self.cache.drop_tenant(tenant_id)
        self._drop_hot(tenant_id)

    def _drop_hot(self, tenant_id: str | None) -> None:
        # Bumped before the pop: a _Hot being built concurrently checks the count
        # after storing itself (see _fresh_hot), so it cannot outlive this drop.
        self._drops += 1
        if tenant_id is None:
            self._hot.clear()
        else:
            self._hot.pop(tenant_id, None)

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

    # -- the fast path's per-tenant object -------------------------------
    def _fresh_hot(self, tenant_id: str) -> _Hot:
        """The tenant's _Hot, rebuilt if it expired; raises KeyRevoked like `_usable`."""
        hot = self._hot.get(tenant_id)
        if hot is not None and self._clock() < hot.until:
            return hot
        drops = self._drops
        self._usable(tenant_id)  # may re-read the state, and drop the tenant's DEKs
        hot = _Hot(self._tenants[tenant_id].fresh_until)
        if len(self._hot) >= 50_000:
            self._hot.clear()
        self._hot[tenant_id] = hot
        if self._drops != drops:  # a drop ran meanwhile: use this one once, keep none
            self._hot.pop(tenant_id, None)
        return hot

    def _sealing_hot(self, tenant_id: str) -> _Hot:
        """The tenant's _Hot with its current DEK's key; raises NoDataKey without one."""
        hot = self._fresh_hot(tenant_id)
        if hot.head:
            return hot
        state = self._tenants[tenant_id].state
        if state.current_dek_id is None:
            raise NoDataKey("the tenant has no active data key")
        dek_id = state.current_dek_id
        keys, good_until = self.cache.lease(tenant_id, dek_id)
        with self._count_lock:
            budget = self._budgets.get(dek_id)
            if budget is None:
                budget = self._budgets[dek_id] = _Budget()
        with self._hot_lock:
            hot.until = min(hot.until, good_until)
            hot.dek_id, hot.budget, hot.seal = dek_id, budget, keys.sealing.encrypt
            hot.head = header(dek_id)
            hot.seal_until = hot.until  # last: the rest is set when encrypt sees it
        return hot

    def _seal_prefix(self, hot: _Hot, tenant_id: str, kind: str, field: str, n: int) -> bytes:
        if len(hot.seal_prefix) >= _MAX_MEMO:
            hot.seal_prefix.clear()
        prefix = hot.head + binding_prefix(tenant_id, kind, field) + n.to_bytes(2, "big")
        hot.seal_prefix[(kind, field, n)] = prefix
        return prefix

    def _opener(
        self, hot: _Hot, tenant_id: str, kind: str, field: str, n: int, blob: bytes
    ) -> tuple[Open, bytes]:
        """The key and associated data up to the record id of `blob` (its length `n`)."""
        version, dek_id = parse_header(blob)
        keys, good_until = self.cache.lease(tenant_id, dek_id)
        head = blob[:HEADER_SIZE]
        prefix = head + binding_prefix(tenant_id, kind, field) + n.to_bytes(2, "big")
        found = (keys.opening[version].decrypt, prefix)
        with self._hot_lock:
            hot.until = min(hot.until, good_until)
            hot.seal_until = min(hot.seal_until, good_until)
            if len(hot.opening) >= _MAX_MEMO:
                hot.opening.clear()
            hot.opening[(head, kind, field, n)] = found
        return found

    # -- counting --------------------------------------------------------
    def spend(self, tenant_id: str, dek_id: int, n: int) -> None:
        with self._count_lock:
            budget = self._budgets.get(dek_id)
            if budget is None:
                budget = self._budgets[dek_id] = _Budget()
            # list(islice(...)) over a range iterator runs in C without
            # releasing the GIL: these units are taken at once or not at all.
            got = len(list(islice(budget.left, n)))
            if got == n:
                return
            # `left` is empty now: every other thread comes here and waits.
            granted = self._reserve(tenant_id, dek_id, max(self._block, n))
            budget.granted += granted
            if got + granted < n:
                budget.left = iter(range(got + granted))  # what was taken goes back
                self._on_exhausted(tenant_id, dek_id)
                raise DataKeyExhausted(
                    "the data key reached its encryption limit; it is being rotated"
                )
            budget.left = iter(range(got + granted - n))

    def take_counts(self) -> dict[int, int]:
        """Encryptions done since the last call, per DEK id (for a batched flush)."""
        counts = {}
        with self._count_lock:
            for dek_id, budget in self._budgets.items():
                used = budget.used()
                if used != budget.reported:
                    counts[dek_id] = used - budget.reported
                    budget.reported = used
        return counts

    # -- the API -----------------------------------------------------------
    def _per_field_calls(self) -> tuple[Encrypt, Decrypt]:
        """`encrypt` and `decrypt`: one call of either is the cost of every field
        written or read, so they are closures over what they use rather than
        methods. A name captured by a closure loads faster than an attribute of
        `self`, and calling a plain function makes no bound method: 4-5 % of a
        32-byte field's decrypt (bench/bench_envelope.py). They check and do
        exactly what the methods did; the slow paths stay methods.
        """
        hot_get, clock = self._hot_get, self._clock
        sealing_hot, spend, seal_prefix = self._sealing_hot, self.spend, self._seal_prefix
        decrypt_checked = self._decrypt_checked
        nonces = NONCES

        def encrypt(tenant_id: str, kind: str, field: str, record_id: str, value: bytes) -> bytes:
            hot = hot_get(tenant_id)
            if hot is None or clock() >= hot.seal_until:
                hot = sealing_hot(tenant_id)
            if next(hot.budget.left, None) is None:
                spend(tenant_id, hot.dek_id, 1)
            rid = record_id.encode()
            n = len(rid)
            prefix = hot.seal_prefix.get((kind, field, n)) or seal_prefix(
                hot, tenant_id, kind, field, n
            )
            nonce = next(nonces.it, None) or nonces.refill()
            return hot.head + nonce + hot.seal(nonce, value, prefix + rid)

        def decrypt(tenant_id: str, kind: str, field: str, record_id: str, blob: bytes) -> bytes:
            rid = record_id.encode()
            hot = hot_get(tenant_id)
            if hot is not None and clock() < hot.until:
                found = hot.opening.get((blob[:HEADER_SIZE], kind, field, len(rid)))
                if found is not None:
                    # No length check first: a blob too short to be a ciphertext
                    # fails here (a nonce cut short is a ValueError), and the slow
                    # path says what is wrong with it.
                    try:
                        return found[0](blob[HEADER_SIZE:BODY_AT], blob[BODY_AT:], found[1] + rid)
                    except (InvalidTag, ValueError):
                        pass
            return decrypt_checked(tenant_id, kind, field, rid, blob)

        return encrypt, decrypt

    def _decrypt_checked(
        self, tenant_id: str, kind: str, field: str, rid: bytes, blob: bytes
    ) -> bytes:
        """`decrypt` with every check, in their order: malformed, the tenant's state, the key."""
        parse_header(blob)
        hot = self._fresh_hot(tenant_id)
        open_, prefix = self._opener(hot, tenant_id, kind, field, len(rid), blob)
        # The blob's own format picks the key, and its header (format byte
        # included) is in the associated data: relabelling a blob with the
        # other format changes both, so it fails to authenticate.
        try:
            return open_(
                blob[HEADER_SIZE:BODY_AT],
                blob[BODY_AT:],
                prefix + rid,
            )
        except InvalidTag:
            raise CiphertextUnauthentic(UNAUTHENTIC) from None

    def encrypt_many(self, tenant_id: str, items: Sequence[Item]) -> list[bytes]:
        """Encrypt a page of values of one tenant: one state check, one count, one nonce draw.

        Each value still gets its own random nonce and its own binding, exactly
        as `encrypt` would write it. A page of one kind and field with record
        ids of one length (the usual page: uuids) is sealed with no Python
        code per value (`_uniform`); any other page by one comprehension.
        """
        hot = self._sealing_hot(tenant_id)
        count = len(items)
        self.spend(tenant_id, hot.dek_id, count)
        seal_, head, prefixes = hot.seal, hot.head, hot.seal_prefix
        nonces = random_nonces(count)
        uniform = _uniform(items)
        if uniform is not None:
            kind, field, rids, values = uniform
            n = len(rids[0])
            # The length of the record id is in the associated data's prefix:
            # one prefix serves the page only if every id has that length.
            if countOf(map(len, rids), n) == count:
                prefix = prefixes.get((kind, field, n)) or self._seal_prefix(
                    hot, tenant_id, kind, field, n
                )
                bodies = map(seal_, nonces, values, _aads(prefix, rids, n))
                return list(map(head.__add__, map(bytes.__add__, nonces, bodies)))

        def prefix_of(kind: str, field: str, n: int) -> bytes:
            return self._seal_prefix(hot, tenant_id, kind, field, n)

        # `for x in [expr]` is an assignment inside a comprehension (CPython 3.9+).
        return [
            head + nonce + seal_(nonce, value, prefix + rid)
            for (kind, field, record_id, value), nonce in zip(items, nonces, strict=True)
            for rid in [record_id.encode()]
            for prefix in [
                prefixes.get((kind, field, len(rid))) or prefix_of(kind, field, len(rid))
            ]
        ]

    def decrypt_many(self, tenant_id: str, items: Sequence[Item]) -> list[bytes]:
        """Decrypt a page of one tenant's blobs, of any DEKs and formats: one state check.

        A page of one kind and field, with record ids of one length, whose
        blobs all carry one header (the usual page) is opened with no Python
        code per blob: every blob of it would take the same key and associated
        data prefix on the per-blob path. A blob there that is cut short or
        altered fails to authenticate, and the page is opened again blob by
        blob, which opens what is sound and says what is wrong exactly as
        `decrypt` does: the shortcut can fail, never accept more.
        """
        hot = self._fresh_hot(tenant_id)
        openers = hot.opening

        def opener(kind: str, field: str, n: int, blob: bytes) -> tuple[Open, bytes]:
            parse_header(blob)  # malformed: before any key is looked up
            return self._opener(hot, tenant_id, kind, field, n, blob)

        uniform = _uniform(items)
        if uniform is not None:
            kind, field, rids, blobs = uniform
            head, n, count = blobs[0][:HEADER_SIZE], len(rids[0]), len(blobs)
            if countOf(map(len, rids), n) == count and countOf(map(HEAD_OF, blobs), head) == count:
                # The first blob's key, looked up as the per-blob path looks it up
                # first (and raising what it would raise for that blob).
                open_, prefix = openers.get((head, kind, field, n)) or opener(
                    kind, field, n, blobs[0]
                )
                try:
                    return list(
                        map(
                            open_, map(NONCE_OF, blobs), map(BODY_OF, blobs), _aads(prefix, rids, n)
                        )
                    )
                except (InvalidTag, ValueError):
                    pass  # ValueError: a nonce cut short by a truncated blob

        # `for x in [expr]` is an assignment inside a comprehension (CPython 3.9+).
        try:
            return [
                open_(
                    blob[HEADER_SIZE:BODY_AT],
                    blob[BODY_AT:],
                    prefix + rid,
                )
                for kind, field, record_id, blob in items
                for rid in [record_id.encode()]
                for open_, prefix in [
                    (
                        openers.get((blob[:HEADER_SIZE], kind, field, len(rid)))
                        if len(blob) >= OVERHEAD
                        else None
                    )
                    or opener(kind, field, len(rid), blob)
                ]
            ]
        except InvalidTag:
            raise CiphertextUnauthentic(UNAUTHENTIC) from None


def _aads(prefix: bytes, rids: list[bytes], n: int) -> tuple[bytes, ...]:
    """`prefix + rid` for each record id, every id `n` bytes long: cut out of their
    concatenation in one struct call instead of one concatenation per record."""
    return struct.unpack(f"{len(prefix) + n}s" * len(rids), prefix + prefix.join(rids))


def _uniform(items: Sequence[Item]) -> tuple[str, str, list[bytes], Sequence[bytes]] | None:
    """(kind, field, encoded record ids, values) of a non-empty page of one kind and
    one field; None for any other page."""
    if not items:
        return None
    kinds, fields, record_ids, values = zip(*items, strict=True)
    kind, field = kinds[0], fields[0]
    count = len(items)
    if kinds.count(kind) != count or fields.count(field) != count:
        return None
    return kind, field, list(map(str.encode, record_ids)), values
