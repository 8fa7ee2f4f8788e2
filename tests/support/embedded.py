"""The environment of `make run`'s embedded mode on a SQLite database of its own,
for tests that run the project in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def sqlite_env(folder: Path) -> dict[str, str]:
    """This process's environment without its database and Keyward settings, on a
    new SQLite database and data folder under `folder`."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "KEYWARD_"))},
        "KEYWARD_MODE": "embedded",
        "KEYWARD_DATA_DIR": str(folder / "data"),
        "DATABASE_URL": f"sqlite:///{folder / 'keyward.sqlite3'}",
    }


def run_embedded(module: str, folder: Path) -> Any:
    """Run `python -m module` from the repository root on a new embedded SQLite
    database under `folder`; what it printed to stdout, read as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=Path(__file__).resolve().parents[2],
        env=sqlite_env(folder),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
