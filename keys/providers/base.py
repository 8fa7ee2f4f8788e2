"""The one interface every key source implements, and the errors it may raise.

Framework-free: providers receive their configuration as plain values and
never import Django, so the rest of the code can rely on this contract alone.

Error contract (what callers do with each):
- `KeyUnavailable`: transient (timeout, connection refused, throttling, 5xx).
  Retry with backoff; caches keep serving what they hold; the tenant is
  *degraded*, never revoked.
- `KeyAccessDenied`: the customer cut access (disabled, deleted, access
  denied, pending deletion). Data must become unreadable once caches expire.
- `KeyMaterialInvalid`: the wrapped bytes or the key material are wrong
  (tampered, wrong size, wrong key). Retrying will not help.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class KeyProviderError(Exception):
    """Base of every error a provider raises. Messages never contain key material."""


class KeyUnavailable(KeyProviderError):
    """The key store could not be reached or asked us to slow down. Transient."""


class KeyAccessDenied(KeyProviderError):
    """The key is disabled, deleted, or access to it was denied."""


class KeyMaterialInvalid(KeyProviderError):
    """The wrapped key or the key material is not valid for this key."""


@dataclass(frozen=True)
class CheckResult:
    """One named check of "Save and Test", with what to do when it fails."""

    name: str
    passed: bool
    message: str
    required: bool = True


@dataclass(frozen=True)
class Wrapped:
    """A DEK wrapped by a provider, and the provider's id of the key version used."""

    blob: bytes
    version: str

    def __repr__(self) -> str:
        return f"Wrapped(version={self.version!r}, {len(self.blob)} bytes)"


@dataclass(frozen=True)
class KeyDescription:
    """What the console shows about a key: never secret, never material."""

    kind: str
    label: str
    facts: Mapping[str, str] = field(default_factory=dict)


Context = Mapping[str, str]


@dataclass(frozen=True)
class KeyHealth:
    """What a health check learns from the key store, without using the key.

    `usable` is False when the customer cut access (disabled, pending deletion);
    `version` is what a new wrap would use now: when it differs from the version
    the tenant's data keys are under, the customer rotated the key.
    """

    usable: bool
    version: str
    detail: str = ""
    # Where the store rotates key material inside one key version (AWS KMS),
    # a marker of the newest material (its rotation date); "" when unknown.
    material: str = ""


class OriginKeys(Protocol):
    """Versioned vendor keys that prove a wrapped key was made by Keyward.

    Where a key store wraps with a public key (Key Vault's RSA-OAEP), anyone
    with that key could make a wrapped DEK; a MAC under one of these keys,
    which only Keyward holds (derived from its root key), says it was us.
    """

    def current(self) -> tuple[int, bytes]:
        """(version, 32-byte key) for new blobs."""
        ...

    def get(self, version: int) -> bytes:
        """The key of `version`; raises KeyMaterialInvalid for an unknown one."""
        ...


class KeyProvider(abc.ABC):
    """A key encryption key (KEK) that wraps and unwraps data keys.

    `context` binds a wrapped DEK to its tenant and version: a provider must
    refuse to unwrap under any other context (AEAD associated data, or the
    KMS encryption context).
    """

    kind: str = ""
    # Calls that wait on a key store over the network and touch no database: a
    # job may overlap a bounded number of them from threads. An in-process
    # provider (vendor key, uploaded key read from the database) is called
    # from the caller's thread only.
    remote: bool = False

    @abc.abstractmethod
    def wrap(self, dek: bytes, context: Context) -> Wrapped: ...

    @abc.abstractmethod
    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes: ...

    @abc.abstractmethod
    def run_checks(self, context: Context) -> list[CheckResult]: ...

    @abc.abstractmethod
    def describe(self) -> KeyDescription: ...

    @abc.abstractmethod
    def current_version(self) -> str: ...

    def health(self) -> KeyHealth:
        """Usable and current version; raises KeyUnavailable or KeyAccessDenied."""
        return KeyHealth(True, self.current_version())

    def prepare_enable(self) -> dict[str, str]:
        """Make what Enable needs in the key store; return configuration to keep.

        Called once, before any data key moves: a KMIP server makes the tenant's
        key here (its identifier is kept), Key Vault pins the version in use now.
        """
        return {}

    def discard_prepared(self, prepared: dict[str, str]) -> None:
        """Enable was refused after `prepare_enable`: undo what it made, if anything."""
        return None

    def can_reencrypt(self, version: str, into: KeyProvider) -> bool:
        """Can the key store itself move a key wrapped under this provider's `version`
        under `into`'s key (`reencrypt`)? Asks nothing of the store."""
        return False

    def reencrypt(
        self, wrapped: bytes, context: Context, version: str, *, into: KeyProvider
    ) -> Wrapped:
        """`wrapped` (under this provider's `version`) wrapped under `into`'s key by the
        key store itself, the DEK never leaving it; only where `can_reencrypt` says so.
        A refusal is KeyAccessDenied or KeyMaterialInvalid, like any other call's."""
        raise KeyMaterialInvalid(f"{self.kind} keys are not re-encrypted by their key store")

    def reencrypt_refused(self, error: KeyProviderError) -> None:
        """The store refused a `reencrypt` (`error`): a provider that learns from it
        (a key policy without the permission) stops asking for a while."""
        return None

    def needs_rewrap(self, wrapped: bytes) -> bool:
        """A blob in a format that is read but no longer written: a task rewraps
        it under the same key version (`rewrap`)."""
        return False

    def rewrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        """`wrapped` made again in today's format under the same key `version`
        (for a blob that `needs_rewrap`); the KEK version does not change."""
        raise KeyMaterialInvalid(f"{self.kind} wrapped keys have one format: nothing to rewrap")

    def resign(self, wrapped: bytes, context: Context) -> bytes:
        """`wrapped` with its vendor signature made again under the current root key
        version, without the key store (see `vendor_root_version`)."""
        raise KeyMaterialInvalid(f"{self.kind} wrapped keys carry no vendor signature")

    def vendor_root_version(self, wrapped: bytes) -> int | None:
        """The vendor root key version this blob depends on besides its KEK (a vendor
        wrap or signature), if any: that version may not be retired while it does."""
        return None

    def pin_version(self, version: str) -> dict[str, str]:
        """Configuration that makes `version` the one new wraps use (a confirmed rotation)."""
        return {}

    # Key stores that can make new key material on request (AWS KMS on-demand
    # rotation) say so; the rest are rotated by a new upload or a new key.
    can_rotate_now: bool = False

    def rotate_now(self) -> str | None:
        """Make new key material now.

        Returns a new version id when the rotation made a new key that data keys
        must be rewrapped under (KMIP: a new key on the server; the caller records
        it as a pending version), or None when the key store changed the material
        inside the same key and older wrapped keys still unwrap (AWS KMS).
        """
        raise NotImplementedError("this key source rotates by a new key or upload")

    def storage_encryption_key(self) -> str | None:
        """The key a dedicated storage location encrypts at rest with, where the store can.

        An S3 bucket's default SSE-KMS key for an AWS KMS key; None where the
        storage cannot use the customer's key itself (objects are encrypted
        under the tenant's DEKs either way).
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def all_required_passed(results: list[CheckResult]) -> bool:
    return bool(results) and all(r.passed for r in results if r.required)


def move_wrapped(
    wrapped: bytes, context: Context, version: str, *, source: KeyProvider, into: KeyProvider
) -> Wrapped:
    """`wrapped` (under `source`'s `version`) wrapped under `into`'s key: inside the key
    store where it can (`reencrypt`), else unwrapped and wrapped again here, the
    plaintext held by this frame only.

    A refused re-encryption is not a failed move: Decrypt and Encrypt then say
    what is wrong, if anything (a disabled key refuses both; a policy without
    the re-encrypt permission only the first). A key store that did not answer
    fails the move, as any call does.
    """
    if source.can_reencrypt(version, into):
        try:
            return source.reencrypt(wrapped, context, version, into=into)
        except (KeyAccessDenied, KeyMaterialInvalid) as refused:
            source.reencrypt_refused(refused)
    material = source.unwrap(wrapped, context, version)
    try:
        return into.wrap(material, context)
    finally:
        del material
