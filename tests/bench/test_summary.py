"""The closing table of `make bench` says met, missed or not measured, never more."""

from __future__ import annotations

from bench.summary import TARGETS, figures, table

RUN = """\
== bench/bench_envelope.py
BENCH field_encrypt_vs_tink 1.012 x
BENCH field_decrypt_vs_tink 0.950 x
# a comment line, and a figure with no target:
BENCH field_encrypt_per_s 880000 ops/s
BENCH audit_first_page_p95 4.2 ms
BENCH audit_filter_action_p95 12.5 ms
BENCH reencrypt_rows_per_s 260000 rows/s
"""


def verdicts() -> dict[str, str]:
    rows = table(figures(RUN.splitlines()))
    return {row.split()[0]: row for row in rows[2:]}


def test_a_figure_at_or_beyond_its_aim_is_met_and_one_short_is_missed():
    rows = verdicts()
    assert "met" in rows["field_encrypt_vs_tink"]
    assert "MISSED" in rows["field_decrypt_vs_tink"]
    assert "260,000" in rows["reencrypt_rows_per_s"] and " met " in rows["reencrypt_rows_per_s"]


def test_a_glob_target_judges_every_line_it_covers():
    rows = verdicts()
    assert " met " in rows["audit_first_page_p95"]
    assert "MISSED" in rows["audit_filter_action_p95"]


def test_a_target_no_benchmark_printed_is_not_measured_rather_than_met():
    rows = verdicts()
    assert "NOT MEASURED" in rows["health_checks_per_s"]
    assert len(rows) == len(TARGETS) + 1  # the audit glob matched two lines


def test_the_last_run_of_a_figure_counts():
    found = figures(["BENCH ingest_vs_bare 0.5 x", "BENCH ingest_vs_bare 0.7 x", "noise"])
    assert found == {"ingest_vs_bare": (0.7, "x")}
