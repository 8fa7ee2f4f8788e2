"""Embedded mode keeps its data folder (0700) and SQLite database (0600) to their owner."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from console.datadir import secure_embedded_storage, sqlite_file

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_mode_creates_its_folder_and_database_owner_only(tmp_path: Path) -> None:
    """`manage.py migrate` as `make run` starts it, with the usual umask 022."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYWARD_", "DJANGO_"))}
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env={**env, "KEYWARD_MODE": "embedded", "KEYWARD_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=300,
        umask=0o022,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    database = data / "keyward.sqlite3"
    assert mode(data) == 0o700
    assert mode(database) == 0o600
    assert mode(data / "secret_key") == 0o600
    with sqlite3.connect(database) as db:  # migrated: the file SQLite used is this one
        assert db.execute("select count(*) from django_migrations").fetchone()[0] > 0


def test_start_creates_what_is_missing_without_a_word(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="console.datadir")
    data = tmp_path / "fresh" / "data"
    secure_embedded_storage(data, data / "keyward.sqlite3")
    assert mode(data) == 0o700
    assert mode(data / "keyward.sqlite3") == 0o600
    assert (data / "keyward.sqlite3").stat().st_size == 0  # an empty database for SQLite
    assert not caplog.records


def test_start_tightens_looser_modes_with_a_log_line(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="console.datadir")
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    database = data / "keyward.sqlite3"
    sqlite3.connect(database).execute("create table t (x)").connection.close()
    database.chmod(0o644)
    wal = data / "keyward.sqlite3-wal"
    wal.write_bytes(b"")
    wal.chmod(0o666)
    (data / "keyward.sqlite3-shm").write_bytes(b"")
    (data / "keyward.sqlite3-shm").chmod(0o600)

    secure_embedded_storage(data, database)

    assert (mode(data), mode(database), mode(wal)) == (0o700, 0o600, 0o600)
    assert mode(data / "keyward.sqlite3-shm") == 0o600
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert f"{data} was readable by others (mode 755); now mode 700" in messages[0]
    assert f"{database} was readable by others (mode 644); now mode 600" in messages[1]
    assert str(wal) in messages[2]
    with sqlite3.connect(database) as db:  # the database itself is untouched
        assert db.execute("select count(*) from t").fetchone() == (0,)

    caplog.clear()
    secure_embedded_storage(data, database)
    assert not caplog.records  # already private: nothing to say


def test_start_without_sqlite_secures_the_folder_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o750)
    secure_embedded_storage(data, None)
    assert mode(data) == 0o700
    assert list(data.iterdir()) == []


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/kw/db.sqlite3"},
            "/srv/kw/db.sqlite3",
        ),
        ({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}, None),
        ({"ENGINE": "django.db.backends.sqlite3", "NAME": "file:kw?mode=memory"}, None),
        ({"ENGINE": "django.db.backends.postgresql", "NAME": "keyward"}, None),
    ],
)
def test_only_an_on_disk_sqlite_database_is_a_file_to_secure(database, expected) -> None:
    found = sqlite_file(database)
    assert (str(found) if found else None) == expected


def test_runembedded_secures_the_folder_before_it_migrates(tmp_path: Path, settings, monkeypatch):
    from console.management.commands import runembedded

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    settings.DATA_DIR = data
    seen: list[int] = []

    class Stop(Exception):
        pass

    def migrate_stand_in(*args: object, **kwargs: object) -> None:
        seen.append(mode(data))
        raise Stop  # the servers are not the point here

    monkeypatch.setattr(runembedded, "call_command", migrate_stand_in)
    with pytest.raises(Stop):
        runembedded.Command().handle(port=8999)
    assert seen == [0o700]
