"""The environment of `make run`'s embedded mode on a SQLite database of its own,
for tests that run the project in a process of its own."""

from __future__ import annotations

import os
from pathlib import Path


def sqlite_env(folder: Path) -> dict[str, str]:
    """This process's environment without its database and Keyward settings, on a
    new SQLite database and data folder under `folder`."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "KEYWARD_"))},
        "KEYWARD_MODE": "embedded",
        "KEYWARD_DATA_DIR": str(folder / "data"),
        "DATABASE_URL": f"sqlite:///{folder / 'keyward.sqlite3'}",
    }
