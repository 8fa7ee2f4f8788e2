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
for bench in bench/bench_*.py; do
    [ -e "$bench" ] || continue
    echo "== $bench"
    .venv/bin/python "$bench" || status=1
done
exit $status
