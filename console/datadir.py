"""The embedded mode's data folder and SQLite database: readable by their owner only.

The folder holds the secret key, the root key file, the demo password, the
broker's messages and (SQLite) the database: everything a local user must not
read. The folder is 0700 and the database 0600, like the root key file; SQLite
gives its journal and WAL files the database's mode. Settings create both
with these modes on first use; `runembedded` tightens older ones at start.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

FOLDER_MODE = 0o700
FILE_MODE = 0o600
# Files SQLite keeps beside the database.
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


def create_private_folder(path: Path) -> None:
    """Create `path` (and missing parents) as 0700 if it does not exist; leave it otherwise."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)


def create_private_file(path: Path) -> bool:
    """Create an empty `path` as 0600 unless it exists; True if it was created.

    An empty file is a valid empty SQLite database, so SQLite opens it instead
    of creating the file with the process's umask.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def tighten(path: Path) -> bool:
    """Remove the group and other bits of `path`'s mode, with a log line; True if it changed."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return False
    path.chmod(mode & ~0o077)
    logger.warning(
        "%s was readable by others (mode %o); now mode %o, its owner's only",
        path,
        mode,
        mode & ~0o077,
    )
    return True


def secure_embedded_storage(data_dir: Path, database: Path | None) -> None:
    """Make the data folder 0700 and the SQLite `database` 0600, creating or tightening them."""
    create_private_folder(data_dir)
    tighten(data_dir)
    if database is None:
        return
    create_private_folder(database.parent)
    create_private_file(database)
    for candidate in (database, *(Path(f"{database}{s}") for s in SQLITE_SIDECARS)):
        if candidate.exists():
            tighten(candidate)


def sqlite_file(database: Mapping[str, object]) -> Path | None:
    """The file of a Django database setting, if it is an on-disk SQLite database."""
    name = str(database.get("NAME") or "")
    if database.get("ENGINE") != "django.db.backends.sqlite3" or name in ("", ":memory:"):
        return None
    if name.startswith("file:"):  # a URI: SQLite's own business
        return None
    return Path(name)
