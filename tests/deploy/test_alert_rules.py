"""deploy/: the alerting rules pass their promtool cases; rules and dashboard name real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from console.metrics import StateCollector
from telemetry import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "keyward.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
METRIC_NAME = re.compile(r"\bkeyward_[a-z_]+\b")


def promtool() -> str:
    # Debian's `prometheus` package; scripts/servers.sh installs it for `make test`.
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (scripts/servers.sh does)"
    return path


@pytest.fixture
def exported(db: None) -> set[str]:
    """The sample names Keyward exports: the families of telemetry.metrics and the
    gauges read from the database at scrape time."""
    names = set()
    families = [
        family
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
        for family in wrapper.describe()
    ]
    families += list(StateCollector().collect())
    for family in families:
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def test_the_rules_are_valid_and_pass_their_cases() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_rule_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)
    cases = RULE_TESTS.read_text()
    assert len(alerts) == len(set(alerts)) >= 6
    for alert in alerts:
        checks = re.findall(rf"alertname: {alert}\n\s+exp_alerts:( \[\])?", cases)  # " []": silent
        assert any(silent for silent in checks), f"{alert}: no case where it stays silent"
        assert any(not silent for silent in checks), f"{alert}: no case where it fires"


def test_the_rules_and_the_dashboard_name_only_metrics_keyward_exports(exported) -> None:
    rules = "\n".join(
        line for line in RULES.read_text().splitlines() if not line.strip().startswith("#")
    )
    in_rules = set(METRIC_NAME.findall(rules))
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 15
    in_dashboard = set(METRIC_NAME.findall("\n".join(expressions)))
    assert in_rules and in_dashboard
    assert not in_rules - exported, sorted(in_rules - exported)
    assert not in_dashboard - exported, sorted(in_dashboard - exported)
    # Every family is on the dashboard.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in exported}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in in_dashboard}
    assert families <= shown, sorted(families - shown)
