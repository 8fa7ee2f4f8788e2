"""Customer-uploaded KEK: a 256-bit key the customer generated and uploaded wrapped.

The key arrives through `crypto.importkit` (RSA-OAEP upload). The caller keeps
each uploaded version in its database, wrapped under the vendor root key, and
gives this provider a `material(version)` callable that returns the 32 raw
bytes of a version. The provider holds no key material between calls, so a
revoke (the caller destroying its copy) takes effect on the next call; cache
inside `material` if needed.

`material` signals:
- `KeyError` or `MaterialDestroyed`: the version's copy is gone (revoked or
  never uploaded) -> `KeyAccessDenied`. Any KeyError escaping `material`
  counts, so do not let unrelated KeyErrors escape it.
- `MaterialUnavailable`: transient (database down) -> `KeyUnavailable`.
Anything else propagates unchanged.

Wrapping is AES-256-GCM with the context as associated data:

    blob = len(label) (1 byte) | label (UTF-8) | nonce (12) | ciphertext+tag
    aad  = b"keyward-uploaded/1" | len(label) | label | encode_context(context)
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.importkit import KEY_BYTES, InvalidKeyMaterial, check_key_material, key_check_value
from keys.providers.base import (
    CheckResult,
    Context,
    KeyAccessDenied,
    KeyDescription,
    KeyHealth,
    KeyMaterialInvalid,
    KeyProvider,
    KeyUnavailable,
    Wrapped,
)
from keys.providers.context import encode_context

_AAD_PREFIX = b"keyward-uploaded/1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
MAX_LABEL_BYTES = 64

CHECK_MATERIAL = "Key material"
CHECK_ROUND_TRIP = "Wrap and unwrap"

DESTROYED_MESSAGE = (
    "Keyward's copy of the uploaded key {version} was destroyed (revoked); "
    "upload the same key again to restore"
)

MaterialSource = Callable[[str], bytes]


class MaterialDestroyed(Exception):
    """Raised by `material(version)` when Keyward's copy of that version is gone."""


class MaterialUnavailable(Exception):
    """Raised by `material(version)` when the copy cannot be read right now (transient)."""


def _label_bytes(version: str) -> bytes:
    raw = version.encode() if isinstance(version, str) else b""
    if not raw or len(raw) > MAX_LABEL_BYTES or not version.isprintable():
        raise KeyMaterialInvalid(f"not an uploaded key version: {version!r:.80}")
    return raw


class UploadedKeyProvider(KeyProvider):
    """Wraps DEKs under the customer's uploaded key (AES-256-GCM)."""

    kind = "uploaded"

    def __init__(self, material: MaterialSource, current: str) -> None:
        _label_bytes(current)
        self._material = material
        self.current = current

    def __repr__(self) -> str:
        return f"<UploadedKeyProvider current={self.current!r}>"

    # -- material ------------------------------------------------------------------
    def _raw(self, version: str) -> bytes:
        try:
            key = self._material(version)
        except (KeyError, MaterialDestroyed):
            raise KeyAccessDenied(DESTROYED_MESSAGE.format(version=version)) from None
        except MaterialUnavailable as exc:
            reason = f": {exc}" if str(exc) else ""
            raise KeyUnavailable(f"the uploaded key {version} could not be read{reason}") from None
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise KeyMaterialInvalid(f"Keyward's copy of uploaded key {version} is not 256 bits")
        return bytes(key)

    def _cipher(self, version: str) -> AESGCM:
        return AESGCM(self._raw(version))

    @staticmethod
    def _aad(label: bytes, context: Context) -> bytes:
        return _AAD_PREFIX + bytes([len(label)]) + label + encode_context(context)

    # -- KeyProvider ---------------------------------------------------------------
    def wrap(self, dek: bytes, context: Context) -> Wrapped:
        label = _label_bytes(self.current)
        cipher = self._cipher(self.current)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        blob = (
            bytes([len(label)])
            + label
            + nonce
            + cipher.encrypt(nonce, dek, self._aad(label, context))
        )
        return Wrapped(blob, self.current)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        label = _label_bytes(version)
        head = 1 + len(label)
        if (
            len(wrapped) < head + _NONCE_BYTES + _TAG_BYTES
            or wrapped[0] != len(label)
            or wrapped[1:head] != label
        ):
            raise KeyMaterialInvalid(
                "wrapped key is malformed or names another uploaded key version"
            )
        cipher = self._cipher(version)
        nonce = wrapped[head : head + _NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, wrapped[head + _NONCE_BYTES :], self._aad(label, context))
        except InvalidTag:
            raise KeyMaterialInvalid(
                "wrapped key does not authenticate under this context"
            ) from None

    def run_checks(self, context: Context) -> list[CheckResult]:
        try:
            key = self._raw(self.current)
            check_key_material(key)
        except (KeyAccessDenied, KeyUnavailable, KeyMaterialInvalid) as exc:
            failed = CheckResult(CHECK_MATERIAL, False, str(exc))
        except InvalidKeyMaterial as exc:
            failed = CheckResult(
                CHECK_MATERIAL, False, f"Uploaded key {self.current} is refused: {exc}"
            )
        else:
            return [
                CheckResult(
                    CHECK_MATERIAL,
                    True,
                    f"Uploaded key {self.current} is present: 256 bits, "
                    f"key check value {key_check_value(key)}.",
                ),
                self._round_trip(context),
            ]
        return [
            failed,
            CheckResult(CHECK_ROUND_TRIP, False, "not run: the key material check failed"),
        ]

    def _round_trip(self, context: Context) -> CheckResult:
        probe = secrets.token_bytes(32)
        try:
            wrapped = self.wrap(probe, context)
            ok = self.unwrap(wrapped.blob, context, wrapped.version) == probe
        except (KeyAccessDenied, KeyUnavailable, KeyMaterialInvalid) as exc:
            return CheckResult(CHECK_ROUND_TRIP, False, str(exc))
        if not ok:
            return CheckResult(CHECK_ROUND_TRIP, False, "Round trip mismatch.")
        return CheckResult(
            CHECK_ROUND_TRIP,
            True,
            f"Wrapped and unwrapped a 32-byte probe with {self.current} under the context.",
        )

    def health(self) -> KeyHealth:
        """Usable while Keyward's copy of the current version exists and has not expired."""
        self._raw(self.current)  # KeyAccessDenied when destroyed or expired
        return KeyHealth(True, self.current, "uploaded key present")

    def describe(self) -> KeyDescription:
        try:
            kcv = key_check_value(self._raw(self.current))
        except KeyAccessDenied:
            kcv = "none: Keyward's copy was destroyed (revoked)"
        except (KeyUnavailable, KeyMaterialInvalid, InvalidKeyMaterial):
            kcv = "unavailable"
        return KeyDescription(
            self.kind,
            "Uploaded key",
            {"Key version": self.current, "Key check value (KCV)": kcv},
        )

    def current_version(self) -> str:
        return self.current
