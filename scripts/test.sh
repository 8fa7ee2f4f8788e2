#!/usr/bin/env bash
# `make test`: install what is missing, start the servers, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh

ensure_debian_packages
ensure_venv
echo "== pip-audit"
.venv/bin/python scripts/audit_dependencies.py
start_servers

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy .
echo "== lint-imports"
.venv/bin/lint-imports
echo "== pytest"
# Two processes: most tests wait on a server, a browser or a worker, so two
# keep both cores busy. Each has its own test database, data folder and Redis
# database (tests/support/parallel.py, loaded before the settings are read).
.venv/bin/python -m pytest -n 2 -p tests.support.parallel "$@"

# The whole suite (no arguments) ends with a minute of the load test: Locust
# against a production deployment, with a rotation, a revoke and a restore.
# `make loadtest` runs the five-minute version.
if [ $# -eq 0 ]; then
    echo "== load test (60 s)"
    .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt locust
    LOADTEST_SECONDS=60 .venv/bin/pytest -p no:cacheprovider -q loadtest/test_load.py
fi
