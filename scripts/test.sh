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
.venv/bin/pytest "$@"
