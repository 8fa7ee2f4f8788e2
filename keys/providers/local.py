"""Vendor-managed KEK: versioned 256-bit root keys in a key file.

The file is the only place root keys live (never the database). It is JSON,
mode 0600, created on first use; `rotate()` adds a version and later wraps use
it, while every older version keeps unwrapping. Wrapping is AES-256-GCM with
the context as associated data:

    blob = version (4 bytes, big-endian) | nonce (12) | ciphertext+tag
    aad  = b"keyward-root/1" | version | encode_context(context)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.providers.base import (
    CheckResult,
    Context,
    KeyDescription,
    KeyMaterialInvalid,
    KeyProvider,
    KeyUnavailable,
    Wrapped,
)
from keys.providers.context import encode_context

FILE_FORMAT = "keyward-root-keys/1"
_AAD_PREFIX = b"keyward-root/1"


class RootKeyFileError(Exception):
    """The root key file is unusable; the message names the file and the problem."""


def _version_label(number: int) -> str:
    return f"root-{number}"


def _parse_label(label: str) -> int:
    if not label.startswith("root-") or not label[5:].isdigit():
        raise KeyMaterialInvalid(f"not a root key version: {label!r}")
    return int(label[5:])


class RootKeyFile:
    """Loads, creates and rotates the key file; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[int, AESGCM] = {}
        self._raw: dict[int, bytes] = {}
        self._current = 0
        self._stamp: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"RootKeyFile({str(self.path)!r}, versions={sorted(self._keys)})"

    # -- loading ---------------------------------------------------------
    def ensure(self) -> None:
        """Create the file if it does not exist, then load and validate it."""
        if not self.path.exists():
            self._create()
        self._load(force=True)

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "format": FILE_FORMAT,
            "current": 1,
            "keys": {"1": base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        tmp = self._write_temp(document)
        try:
            os.link(tmp, self.path)  # atomic, and refuses to replace a file made meanwhile
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink()

    def _write_temp(self, document: dict[str, object]) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".root-keys-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(tmp).unlink()
            raise
        return tmp

    def _load(self, *, force: bool = False) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            raise RootKeyFileError(f"root key file {self.path} does not exist") from None
        stamp = (info.st_mtime_ns, info.st_ino)
        if not force and stamp == self._stamp:
            return
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise RootKeyFileError(
                f"root key file {self.path} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 600 {self.path}"
            )
        try:
            document = json.loads(self.path.read_text())
            if document.get("format") != FILE_FORMAT:
                raise ValueError("unknown format")
            keys = {int(v): base64.b64decode(k, validate=True) for v, k in document["keys"].items()}
            current = int(document["current"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RootKeyFileError(f"root key file {self.path} is corrupt: {exc}") from None
        if current not in keys or any(len(k) != 32 for k in keys.values()):
            raise RootKeyFileError(
                f"root key file {self.path} is corrupt: keys must be 32 bytes and include current"
            )
        with self._lock:
            self._keys = {v: AESGCM(k) for v, k in keys.items()}
            self._raw = keys
            self._current = current
            self._stamp = stamp

    def current(self) -> tuple[int, AESGCM]:
        self._load()
        return self._current, self._keys[self._current]

    def get(self, version: int) -> AESGCM:
        if version not in self._keys:
            self._load()  # another process may have rotated
        try:
            return self._keys[version]
        except KeyError:
            raise KeyMaterialInvalid(f"unknown root key version root-{version}") from None

    def subkey(self, version: int, purpose: bytes) -> bytes:
        """A 32-byte key for one purpose, derived from root key `version` (HKDF-SHA256):
        the root key itself only ever wraps."""
        self.get(version)  # loads, and refuses an unknown version
        return HKDF(
            hashes.SHA256(), length=32, salt=None, info=b"keyward root subkey\x00" + purpose
        ).derive(self._raw[version])

    def origin_keys(self, purpose: bytes) -> RootOriginKeys:
        return RootOriginKeys(self, purpose)

    def versions(self) -> list[int]:
        self._load()
        return sorted(self._keys)

    # -- rotation --------------------------------------------------------
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def rotate(self) -> int:
        """Add a new root key version and make it current; return its number."""
        with self._exclusive():
            self._load(force=True)
            document = json.loads(self.path.read_text())
            new = max(int(v) for v in document["keys"]) + 1
            document["keys"][str(new)] = base64.b64encode(secrets.token_bytes(32)).decode()
            document["current"] = new
            tmp = self._write_temp(document)
            Path(tmp).replace(self.path)
            self._load(force=True)
        return new

    def retire(self, version: int) -> None:
        """Remove root key `version` from the file for good. The caller makes sure
        nothing depends on it any more; the current version is never retired."""
        with self._exclusive():
            self._load(force=True)
            document = json.loads(self.path.read_text())
            if int(document["current"]) == version:
                raise RootKeyFileError(
                    f"{_version_label(version)} is the current root key version: rotate first"
                )
            if str(version) not in document["keys"]:
                raise RootKeyFileError(
                    f"{_version_label(version)} is not in root key file {self.path}"
                )
            del document["keys"][str(version)]
            tmp = self._write_temp(document)
            Path(tmp).replace(self.path)
            self._load(force=True)


class RootOriginKeys:
    """`OriginKeys` derived from the root key file, one per purpose; they follow
    its rotation (new blobs use the current version, older ones keep verifying)."""

    def __init__(self, root: RootKeyFile, purpose: bytes) -> None:
        self._root, self._purpose = root, purpose

    def current(self) -> tuple[int, bytes]:
        version, _ = self._root.current()
        return version, self._root.subkey(version, self._purpose)

    def get(self, version: int) -> bytes:
        return self._root.subkey(version, self._purpose)


class LocalProvider(KeyProvider):
    """The vendor-managed KEK."""

    kind = "local"

    def __init__(self, root_keys: RootKeyFile) -> None:
        self.root_keys = root_keys

    @staticmethod
    def _aad(version: int, context: Context) -> bytes:
        return _AAD_PREFIX + version.to_bytes(4, "big") + encode_context(context)

    def wrap(self, dek: bytes, context: Context) -> Wrapped:
        try:
            version, key = self.root_keys.current()
        except RootKeyFileError as exc:
            raise KeyUnavailable(str(exc)) from None
        nonce = secrets.token_bytes(12)
        blob = (
            version.to_bytes(4, "big")
            + nonce
            + key.encrypt(nonce, dek, self._aad(version, context))
        )
        return Wrapped(blob, _version_label(version))

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        number = _parse_label(version)
        if len(wrapped) < 4 + 12 + 16 or int.from_bytes(wrapped[:4], "big") != number:
            raise KeyMaterialInvalid("wrapped key is malformed or names another root key version")
        try:
            key = self.root_keys.get(number)
        except RootKeyFileError as exc:
            raise KeyUnavailable(str(exc)) from None
        try:
            return key.decrypt(wrapped[4:16], wrapped[16:], self._aad(number, context))
        except InvalidTag:
            raise KeyMaterialInvalid(
                "wrapped key does not authenticate under this context"
            ) from None

    def vendor_root_version(self, wrapped: bytes) -> int | None:
        return int.from_bytes(wrapped[:4], "big") if len(wrapped) >= 4 else None

    def run_checks(self, context: Context) -> list[CheckResult]:
        try:
            self.root_keys.versions()
        except RootKeyFileError as exc:
            return [CheckResult("Root key file", False, str(exc))]
        probe = secrets.token_bytes(32)
        try:
            wrapped = self.wrap(probe, context)
            ok = self.unwrap(wrapped.blob, context, wrapped.version) == probe
        except (KeyUnavailable, KeyMaterialInvalid) as exc:
            return [CheckResult("Wrap and unwrap", False, str(exc))]
        return [
            CheckResult("Root key file", True, "Readable, owner-only permissions."),
            CheckResult(
                "Wrap and unwrap", ok, "Round trip succeeded." if ok else "Round trip mismatch."
            ),
        ]

    def describe(self) -> KeyDescription:
        version, _ = self.root_keys.current()
        return KeyDescription(
            self.kind, "Vendor-managed key", {"Root key version": _version_label(version)}
        )

    def current_version(self) -> str:
        return _version_label(self.root_keys.current()[0])
