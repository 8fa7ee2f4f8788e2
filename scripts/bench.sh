#!/usr/bin/env bash
# `make bench`: start the servers and run every benchmark under bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh

ensure_debian_packages
ensure_venv
# Tink is what bench_envelope.py compares field encryption with: installed for
# the benchmarks only (pinned in constraints.txt), never a runtime dependency.
.venv/bin/python -c 'import tink' 2>/dev/null \
    || .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt tink
start_servers

status=0
output=$(mktemp)
# One EXIT trap for both: a second `trap ... EXIT` would replace start_servers'
# own, and leave the servers running after the benchmarks.
trap 'rm -f "$output"; stop_servers' EXIT
for bench in bench/bench_*.py; do
    [ -e "$bench" ] || continue
    echo "== $bench"
    .venv/bin/python "$bench" 2>&1 | tee -a "$output" || status=1
done
# Every target, met, missed or not measured, in one table at the end.
.venv/bin/python bench/summary.py < "$output"
exit $status
