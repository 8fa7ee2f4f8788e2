"""Audit the installed dependencies with pip-audit, against PyPI's advisories.

A finding fails the run unless security/pip-audit-exceptions.toml holds a note
for it (its id or one of its aliases, and the package) whose review-by date has
not passed. An expired or incomplete note fails the run too. Keyward itself is
installed editable and is not a published package: it is skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXCEPTIONS = ROOT / "security" / "pip-audit-exceptions.toml"
NOTE_FIELDS = ("id", "package", "noted", "why", "review_by")

PIP_AUDIT = (
    "-m",
    "pip_audit",
    "--vulnerability-service",
    "pypi",
    "--skip-editable",
    "--local",
    "--format",
    "json",
    "--desc",
    "off",
    "--aliases",
    "on",
    "--progress-spinner",
    "off",
)


@dataclass(frozen=True)
class Note:
    id: str
    package: str
    noted: date
    why: str
    review_by: date


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_notes(text: str, *, today: date) -> tuple[list[Note], list[str]]:
    """The notes of the exceptions file, and what is wrong with any of them."""
    notes: list[Note] = []
    problems: list[str] = []
    for number, entry in enumerate(tomllib.loads(text).get("exception", []), start=1):
        missing = [name for name in NOTE_FIELDS if not entry.get(name)]
        if missing:
            problems.append(f"exception #{number} lacks {', '.join(missing)}")
            continue
        if not isinstance(entry["noted"], date) or not isinstance(entry["review_by"], date):
            problems.append(f"exception #{number}: noted and review_by must be dates (YYYY-MM-DD)")
            continue
        note = Note(**{name: entry[name] for name in NOTE_FIELDS})
        if note.review_by < today:
            problems.append(
                f"exception {note.id} ({note.package}) was to be reviewed by "
                f"{note.review_by.isoformat()}: decide again and date the note anew"
            )
            continue
        notes.append(note)
    return notes, problems


@dataclass
class Verdict:
    failures: list[str]
    excused: list[str]
    audited: list[str]
    unaudited: list[str]  # the service could not look these up


def judge(report: dict[str, Any], notes: list[Note]) -> Verdict:
    verdict = Verdict([], [], [], [])
    for dependency in report.get("dependencies", []):
        name = _canonical(dependency["name"])
        reason = dependency.get("skip_reason")
        if reason and "editable" in reason:
            continue
        (verdict.unaudited if reason else verdict.audited).append(name)
        for vuln in dependency.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            note = next((n for n in notes if n.id in ids and _canonical(n.package) == name), None)
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
            line = f"{name} {dependency.get('version', '?')}: {vuln['id']} (fixed in {fixed})"
            if note is None:
                verdict.failures.append(line)
            else:
                verdict.excused.append(f"{line}: noted {note.noted.isoformat()}, {note.why}")
    return verdict


def main() -> int:
    today = datetime.now(UTC).date()
    notes, problems = load_notes(EXCEPTIONS.read_text(), today=today)
    result = subprocess.run(
        [sys.executable, *PIP_AUDIT], capture_output=True, text=True, timeout=600
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit did not produce a report (exit {result.returncode}):", file=sys.stderr)
        print(result.stderr[-4000:], file=sys.stderr)
        return 1
    verdict = judge(report, notes)
    failures, unaudited = verdict.failures, verdict.unaudited
    print(f"pip-audit: {len(verdict.audited)} installed packages audited against PyPI's advisories")
    for line in verdict.excused:
        print(f"  excused: {line}")
    if unaudited:
        # PyPI answered nothing for these releases (a mirror without per-release
        # documents, or a release PyPI does not have): said aloud, not hidden.
        print(f"  not looked up ({len(unaudited)}): {', '.join(sorted(unaudited))}")
    for line in problems:
        print(f"  {EXCEPTIONS.relative_to(ROOT)}: {line}", file=sys.stderr)
    for line in failures:
        print(f"  VULNERABLE: {line}", file=sys.stderr)
    if failures:
        print(
            "Upgrade the pin in constraints.txt to a fixed release, or add a dated note to "
            f"{EXCEPTIONS.relative_to(ROOT)} saying why the finding does not apply.",
            file=sys.stderr,
        )
    return 1 if failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
