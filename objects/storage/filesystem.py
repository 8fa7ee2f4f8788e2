"""Objects as files under one folder: the embedded default and a BYOK tenant's own folder.

Layout. A key's segments become nested names under the root: every segment
but the last is a folder "<segment>.dir", the last a file "<segment>.obj", so
the keys "a" and "a/b" can live side by side (as on S3) and no key can name a
temporary file. A segment longer than 200 bytes of UTF-8 is named by its
SHA-256 instead, "\\<hex>.dir" or "\\<hex>.obj": keys never contain a
backslash, so those names cannot meet a real segment. The folder must be on a
case-sensitive filesystem (Linux).

File format. Metadata travels inside the object file, so that one rename
replaces data and metadata together:

    file = "KWFS" | version (1 byte, 0x01) | n (4 bytes, big-endian)
           | n bytes of JSON {"key": ..., "metadata": {...}} | the object's bytes

Writes go to ".<name>.<random>.tmp" in the destination folder, are fsynced,
renamed over the destination with os.replace and the folder fsynced: a reader
sees the old file or the new one, and an open reader keeps reading the file it
opened. A writer killed mid-way leaves a ".tmp" file that listings ignore.
Deleting an object removes the folders it leaves empty.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from objects.storage.base import (
    DEFAULT_READS,
    ObjectMissing,
    ReadSizes,
    Storage,
    StorageDenied,
    StorageError,
    StoredObject,
    validate_metadata,
    validate_prefix,
)

MAGIC = b"KWFS"
FORMAT_V1 = 1
_PREAMBLE = struct.Struct(">4sBI")
MAX_HEADER = 64 * 1024
LONG_SEGMENT = 200
OBJECT_SUFFIX = ".obj"
FOLDER_SUFFIX = ".dir"
TEMP_SUFFIX = ".tmp"
_ATTEMPTS = 5


class FilesystemStorage(Storage):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.location = f"filesystem {self.root}"

    # -- the interface ----------------------------------------------------

    def put(
        self, key: str, chunks: Iterable[bytes], *, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        self.check_key(key)
        meta = validate_metadata(metadata)
        path = self._path(key)
        header = json.dumps({"key": key, "metadata": meta}, sort_keys=True).encode()
        temp, handle = self._create_temp(path)
        size = 0
        # An error from `chunks` is the caller's and propagates unchanged; errors
        # of our own writes become StorageError. Either way the temporary goes.
        try:
            with handle:
                try:
                    _write_all(handle, _PREAMBLE.pack(MAGIC, FORMAT_V1, len(header)) + header)
                except OSError as error:
                    raise _mapped(error, key) from error
                for chunk in chunks:
                    try:
                        _write_all(handle, chunk)
                    except OSError as error:
                        raise _mapped(error, key) from error
                    size += len(chunk)
                try:
                    os.fsync(handle.fileno())
                except OSError as error:
                    raise _mapped(error, key) from error
            try:
                temp.replace(path)  # os.replace: atomic within one filesystem
            except OSError as error:
                raise _mapped(error, key) from error
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        self._sync_folder(path.parent, key)
        return StoredObject(key=key, size=size, metadata=meta)

    def get(self, key: str, *, sizes: ReadSizes | None = None) -> Iterator[bytes]:
        self.check_key(key)
        handle = self._open(key)
        try:
            self._read_header(handle, key)
        except BaseException:
            handle.close()
            raise
        return _stream(handle, key, sizes or DEFAULT_READS)

    def head(self, key: str) -> StoredObject:
        self.check_key(key)
        with self._open(key) as handle:
            header_size, stored_key, meta = self._read_header(handle, key)
            size = os.fstat(handle.fileno()).st_size - header_size
        return StoredObject(key=stored_key, size=size, metadata=meta)

    def delete(self, key: str) -> None:
        self.check_key(key)
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise _mapped(error, key) from error
        self._sync_folder(path.parent, key)
        self._prune(path.parent)

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        validate_prefix(prefix, self.max_key_bytes)
        # Descend straight to the folder of the prefix's complete segments, then
        # read the key of every object below it from its file's header.
        *folders, _rest = prefix.split("/")
        start = self.root.joinpath(*(_name(s, FOLDER_SUFFIX) for s in folders))
        found: list[StoredObject] = []
        try:
            for file in _object_files(start):
                try:
                    with _open_nofollow(file) as handle:
                        header_size, key, _meta = self._read_header(handle, None)
                        size = os.fstat(handle.fileno()).st_size - header_size
                except FileNotFoundError:
                    continue  # deleted while we listed
                if key.startswith(prefix):
                    found.append(StoredObject(key=key, size=size, metadata={}))
        except OSError as error:
            raise _mapped(error, prefix) from error
        found.sort(key=lambda o: o.key)
        return iter(found)

    def ensure(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise _mapped(error, str(self.root)) from error

    # -- helpers ----------------------------------------------------------

    def _path(self, key: str) -> Path:
        *folders, last = key.split("/")
        names = [_name(s, FOLDER_SUFFIX) for s in folders]
        return self.root.joinpath(*names, _name(last, OBJECT_SUFFIX))

    def _sync_folder(self, folder: Path, key: str) -> None:
        """Make a rename or unlink in `folder` durable.

        The folder may already be gone: a concurrent delete of the same key
        removed it once it was empty, which is a valid order of the two.
        """
        try:
            _fsync_folder(folder)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise _mapped(error, key) from error

    def _create_temp(self, path: Path) -> tuple[Path, BinaryIO]:
        """A new temporary file beside `path`, creating missing folders.

        A concurrent delete may remove a folder we just made (it was empty):
        try again a few times.
        """
        for attempt in range(_ATTEMPTS):
            temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
            try:
                self._make_folders(path.parent)
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:
                if attempt == _ATTEMPTS - 1:
                    raise StorageError(f"cannot create a file in {path.parent}") from None
                continue
            except OSError as error:
                raise _mapped(error, str(path)) from error
            # Unbuffered: chunks (64 KiB segments, 1 MiB reads) go straight to
            # the kernel without a copy through a user-space buffer.
            return temp, os.fdopen(fd, "wb", buffering=0)
        raise AssertionError("unreachable")

    def _make_folders(self, folder: Path) -> None:
        if folder.is_dir():
            return
        if not self.root.is_dir():
            raise StorageError(f"{self.location} does not exist; call ensure() first")
        missing = []
        current = folder
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
                _fsync_folder(path.parent)

    def _prune(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or gone): stop
            with contextlib.suppress(OSError):
                _fsync_folder(folder.parent)
            folder = folder.parent

    def _open(self, key: str) -> BinaryIO:
        try:
            return _open_nofollow(self._path(key))
        except FileNotFoundError:
            raise ObjectMissing(f"no object {key!r} in {self.location}") from None
        except OSError as error:
            raise _mapped(error, key) from error

    def _read_header(self, handle: BinaryIO, key: str | None) -> tuple[int, str, dict[str, str]]:
        preamble = handle.read(_PREAMBLE.size)
        if len(preamble) == _PREAMBLE.size:
            magic, version, length = _PREAMBLE.unpack(preamble)
            if magic == MAGIC and version == FORMAT_V1 and length <= MAX_HEADER:
                raw = handle.read(length)
                if len(raw) == length:
                    header = json.loads(raw)
                    stored_key, meta = header["key"], header["metadata"]
                    if key is None or stored_key == key:
                        return _PREAMBLE.size + length, stored_key, meta
        raise StorageError(f"{handle.name}: not an object file of this storage")


def _name(segment: str, suffix: str) -> str:
    raw = segment.encode()
    if len(raw) > LONG_SEGMENT:
        return "\\" + hashlib.sha256(raw).hexdigest() + suffix
    return segment + suffix


def _object_files(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.endswith(FOLDER_SUFFIX) and entry.is_dir(follow_symlinks=False):
            yield from _object_files(Path(entry.path))
        elif entry.name.endswith(OBJECT_SUFFIX) and entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _open_nofollow(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    return os.fdopen(fd, "rb", buffering=0)


def _write_all(handle: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if written is None:  # only for non-blocking files, which these are not
            raise OSError(errno.EAGAIN, "write would block")
        view = view[written:]


def _stream(handle: BinaryIO, key: str, sizes: ReadSizes) -> Iterator[bytes]:
    with handle:
        size = sizes.first
        while True:
            try:
                chunk = handle.read(size)
                size = sizes.rest
            except OSError as error:
                raise _mapped(error, key) from error
            if not chunk:
                return
            yield chunk


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mapped(error: OSError, what: str) -> StorageError:
    if error.errno in {errno.EACCES, errno.EPERM, errno.EROFS}:
        return StorageDenied(f"{what!r}: {error.strerror}")
    return StorageError(f"{what!r}: {error.strerror or error}")
