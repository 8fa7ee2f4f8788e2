"""The README's Production section lists every KEYWARD_* setting the code reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# env.string("KEYWARD_X"), env.integer(\n    "KEYWARD_X", ...): every reader in settings.
READ = re.compile(r"env\.\w+\(\s*\"(KEYWARD_[A-Z0-9_]+)\"")


def settings_read() -> set[str]:
    return set(READ.findall((ROOT / "console" / "settings.py").read_text()))


def production_table() -> dict[str, str]:
    """Rows `| \\`NAME\\` | default | meaning |` of the README's Production section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`KEYWARD_[A-Z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_settings_reader_finds_the_settings() -> None:
    read = settings_read()
    assert {"KEYWARD_MODE", "KEYWARD_DATA_DIR", "KEYWARD_ROOT_KEY_FILE"} <= read
    assert "KEYWARD_INSECURE_HTTP_LOOPBACK" in read


def test_every_setting_has_a_row_with_its_default() -> None:
    rows = production_table()
    missing = settings_read() - rows.keys()
    assert not missing, f"README.md, ## Production: add a row for {sorted(missing)}"
    assert all(rows.values()), [name for name, default in rows.items() if not default]


def test_every_row_names_a_setting_the_code_reads() -> None:
    stale = production_table().keys() - settings_read()
    assert not stale, f"README.md, ## Production: no setting {sorted(stale)}"
