"""The storage interface that objects live behind, and the key rules every backend shares.

Framework-free. A backend stores opaque bytes under a key, with a few string
metadata pairs, and knows nothing of tenants, keys or encryption: the caller
hands it ciphertext and chooses the location (a shared one with a tenant
prefix, or a tenant's dedicated folder or bucket).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

MAX_KEY_BYTES = 1024
# Pieces a get hands over: 1 MiB each unless the caller asks for other sizes.
READ_SIZE = 1024 * 1024
MAX_READ_SIZE = 64 * 1024 * 1024
MAX_METADATA_BYTES = 2048  # S3's limit for all user metadata, names and values together
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


class StorageError(Exception):
    """The storage could not do it now (network, throttling, a 5xx): retrying may help."""


class ObjectMissing(StorageError):
    """No object under that key."""


class StorageDenied(StorageError):
    """The storage refused: access denied, or its encryption key is disabled or gone.

    Retrying does not help until someone changes a permission or a key.
    """


@dataclass(frozen=True)
class ReadSizes:
    """How a get cuts an object: `first` bytes, then `rest` bytes per piece.

    An object format can ask for pieces that end where its records end (the
    segments' `aligned_reads`), so that no record is copied together from two.
    """

    first: int
    rest: int

    def __post_init__(self) -> None:
        for name, value in (("first", self.first), ("rest", self.rest)):
            if not 1 <= value <= MAX_READ_SIZE:
                raise ValueError(f"a read size ({name}) is 1 byte to {MAX_READ_SIZE} bytes")


DEFAULT_READS = ReadSizes(READ_SIZE, READ_SIZE)


class InvalidKey(ValueError):
    """A key no backend accepts; the message says which rule it breaks."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)


def validate_key(key: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    """Return `key` when every backend can store it under that exact name, else InvalidKey.

    The rules, the same for the filesystem and S3 so that objects can move
    between them: 1 to 1024 bytes of UTF-8 (fewer when a backend adds a
    prefix: Storage.max_key_bytes); no control characters (NUL included) and
    no backslash; "/" separates segments, which cannot be empty (no leading or
    trailing "/", no "//") and cannot be "." or "..".
    """
    if not isinstance(key, str):
        raise InvalidKey("a key is a string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey("a key must be valid UTF-8 (no lone surrogates)") from None
    if not 1 <= size <= max_bytes:
        raise InvalidKey(f"a key here is 1 to {max_bytes} bytes of UTF-8, not {size}")
    if _CONTROL.search(key):
        raise InvalidKey("a key cannot contain control characters")
    if "\\" in key:
        raise InvalidKey("a key cannot contain a backslash")
    if key.startswith("/"):
        raise InvalidKey("a key cannot start with '/'")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey("a key cannot have an empty segment ('//' or a trailing '/')")
        if segment in {".", ".."}:
            raise InvalidKey("a key cannot have a '.' or '..' segment")
    return key


def validate_prefix(prefix: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    """A listing prefix: empty, or the start of a valid key (it may end with '/')."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix, max_bytes)
    return prefix


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata every backend returns unchanged: lower-case names, printable ASCII values.

    S3 lower-cases names and mangles non-ASCII values, and caps the total at 2 KiB.
    """
    result = dict(metadata or {})
    total = 0
    for name, value in result.items():
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise ValueError(
                f"metadata name {name!r}: 1 to 64 of a-z, 0-9 and '-', starting with a letter "
                "or digit"
            )
        if not isinstance(value, str) or not _METADATA_VALUE.fullmatch(value):
            raise ValueError(f"metadata value for {name!r} must be printable ASCII")
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {total} bytes; at most {MAX_METADATA_BYTES}")
    return result


class Storage(abc.ABC):
    """Where objects live. Keys follow validate_key; every method validates them first.

    Errors: ObjectMissing for an absent key, StorageDenied for a refusal that
    retrying will not fix, StorageError for anything else that may pass; a
    refused key or metadata is InvalidKey / ValueError before any I/O.
    """

    location: str  # for people: "filesystem /srv/keyward/objects", "s3://bucket/prefix/"
    max_key_bytes: int = MAX_KEY_BYTES  # less where the backend prefixes keys

    def check_key(self, key: str) -> str:
        return validate_key(key, self.max_key_bytes)

    @abc.abstractmethod
    def put(
        self, key: str, chunks: Iterable[bytes], *, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Store the concatenation of `chunks` under `key`, streaming.

        Atomic: readers see the old object or the new one, never part of one;
        when `chunks` raises, nothing changes and the error propagates.
        """

    @abc.abstractmethod
    def get(self, key: str, *, sizes: ReadSizes | None = None) -> Iterator[bytes]:
        """The object's bytes, streamed. ObjectMissing is raised by this call, not later.

        Pieces of `sizes` (READ_SIZE each by default), the last one shorter;
        a storage may hand over a shorter piece anywhere (a network read), so
        the sizes are for speed, never for correctness.
        """

    @abc.abstractmethod
    def head(self, key: str) -> StoredObject:
        """Size and metadata; ObjectMissing when absent."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error when it is already gone."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Objects whose key starts with `prefix`, sorted by key (UTF-8 byte order).

        Listings carry key and size only: `metadata` is empty (S3 does not list
        it; call head() for an object's metadata).
        """

    @abc.abstractmethod
    def ensure(self) -> None:
        """Create the location (folder, bucket) and its settings if needed; idempotent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"
