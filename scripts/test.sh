#!/usr/bin/env bash
# The whole test suite: set-up, static checks, then every test against SQLite and PostgreSQL.
# This is the README's test command and exactly what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/ensure-postgres.sh
./scripts/ensure-chromium.sh
export TRIAGE_TEST_POSTGRES_URL=${TRIAGE_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
# One command per line: under `set -e` a failure inside an `a && b` list would not stop us.
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== import-linter"
.venv/bin/lint-imports
echo "== pytest"
exec .venv/bin/pytest "$@"
