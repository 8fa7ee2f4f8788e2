"""Where encrypted objects live: one small interface, a filesystem and an S3 backend.

Framework-free: settings are passed in by the caller. S3Storage is imported
on first use, so the filesystem backend works without boto3 installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from objects.storage.base import (
    InvalidKey,
    ObjectMissing,
    ReadSizes,
    Storage,
    StorageDenied,
    StorageError,
    StoredObject,
    validate_key,
    validate_metadata,
)
from objects.storage.filesystem import FilesystemStorage

if TYPE_CHECKING:
    from objects.storage.s3 import S3Storage

__all__ = [
    "FilesystemStorage",
    "InvalidKey",
    "ObjectMissing",
    "ReadSizes",
    "S3Storage",
    "Storage",
    "StorageDenied",
    "StorageError",
    "StoredObject",
    "validate_key",
    "validate_metadata",
]


def __getattr__(name: str) -> Any:
    if name == "S3Storage":
        # Loaded on first use: it imports boto3, which only S3 storage needs.
        from objects.storage.s3 import S3Storage  # noqa: PLC0415

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
