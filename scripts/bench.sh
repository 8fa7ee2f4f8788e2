#!/usr/bin/env bash
# `make bench`: start the servers and run every benchmark under bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh

ensure_debian_packages
ensure_venv
start_servers

status=0
for bench in bench/bench_*.py; do
    [ -e "$bench" ] || continue
    echo "== $bench"
    .venv/bin/python "$bench" || status=1
done
exit $status
