"""scripts/audit_dependencies.py: which pip-audit findings fail `make test`."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 3)


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "audit_dependencies", ROOT / "scripts" / "audit_dependencies.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def report(*vulns: dict) -> dict:
    return {
        "dependencies": [
            {"name": "keyward", "skip_reason": "distribution marked as editable"},
            {"name": "Django", "version": "5.2.1", "vulns": list(vulns)},
            {"name": "six", "version": "1.17.0", "vulns": []},
            {"name": "gone", "skip_reason": "Dependency not found on PyPI"},
        ]
    }


FINDING = {"id": "PYSEC-2026-1", "aliases": ["CVE-2026-1234"], "fix_versions": ["5.2.2"]}

NOTE = """
[[exception]]
id = "CVE-2026-1234"
package = "django"
noted = 2026-11-01
why = "only the admin's password reset form is affected, and it is not routed"
review_by = {review_by}
"""


def test_a_finding_without_a_note_fails(audit: ModuleType) -> None:
    notes, problems = audit.load_notes("", today=TODAY)
    verdict = audit.judge(report(FINDING), notes)
    assert not problems
    assert verdict.failures == ["django 5.2.1: PYSEC-2026-1 (fixed in 5.2.2)"]
    assert verdict.audited == ["django", "six"]
    assert verdict.unaudited == ["gone"]  # keyward, editable, is neither


def test_a_dated_note_excuses_the_finding_by_any_of_its_ids(audit: ModuleType) -> None:
    notes, problems = audit.load_notes(NOTE.format(review_by="2027-03-01"), today=TODAY)
    verdict = audit.judge(report(FINDING), notes)
    assert not problems and not verdict.failures
    assert "noted 2026-11-01" in verdict.excused[0]


def test_a_note_for_another_package_excuses_nothing(audit: ModuleType) -> None:
    text = NOTE.format(review_by="2027-03-01").replace('"django"', '"flask"')
    notes, _ = audit.load_notes(text, today=TODAY)
    assert audit.judge(report(FINDING), notes).failures


def test_an_expired_note_fails_and_excuses_nothing(audit: ModuleType) -> None:
    notes, problems = audit.load_notes(NOTE.format(review_by="2026-12-02"), today=TODAY)
    assert notes == []
    assert "was to be reviewed by 2026-12-02" in problems[0]
    assert audit.judge(report(FINDING), notes).failures


def test_a_note_without_a_reason_or_dates_fails(audit: ModuleType) -> None:
    text = NOTE.format(review_by="2027-03-01").replace("why = ", "# why = ")
    notes, problems = audit.load_notes(text, today=TODAY)
    assert notes == [] and "lacks why" in problems[0]
    text = NOTE.format(review_by='"soon"')
    notes, problems = audit.load_notes(text, today=TODAY)
    assert notes == [] and "must be dates" in problems[0]


def test_the_repository_notes_are_valid_today(audit: ModuleType) -> None:
    _, problems = audit.load_notes(audit.EXCEPTIONS.read_text(), today=datetime.now(UTC).date())
    assert not problems
