#!/usr/bin/env bash
# `make loadtest`: Locust against a production deployment for LOADTEST_SECONDS (300),
# with a rotation, a revoke and a restore in the middle; then the invariants.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/servers.sh

ensure_debian_packages
ensure_venv
# Locust is for this run only: it is not a dependency of Keyward or of its tests.
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt locust
start_servers

export LOADTEST_SECONDS="${LOADTEST_SECONDS:-300}"
.venv/bin/pytest -p no:cacheprovider -s -q loadtest/test_load.py "$@"
