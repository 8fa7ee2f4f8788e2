from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_templates_and_static_files(tmp_path: Path) -> None:
    # A copy of the sources, so that the build's own folders stay out of the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "data", "tests", "bench", "*cache*", "build", "*.egg-info"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        # Build isolation fetches setuptools and wheel from the package index: about 15 s.
        timeout=60,
    )
    (wheel,) = (tmp_path / "dist").glob("keyward-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    shipped = {
        f"console/{path.relative_to(ROOT).as_posix()}"
        for folder in ("templates", "static")
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
    }
    assert shipped, "the checkout has templates and static files"
    assert shipped <= names, sorted(shipped - names)
    assert "console/templates/base.html" in names
    assert "console/static/js/htmx.min.js" in names
    assert "console/migrations/__init__.py" in names
