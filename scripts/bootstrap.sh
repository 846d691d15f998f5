#!/usr/bin/env bash
# Create .venv with Python 3.11 and install the locked dependencies plus the project itself.
# Idempotent: a second run only re-syncs what changed. Needs nothing but python3.11 and the
# package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "bootstrap: $PY not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PY"
  "$PY" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
fi
stamp=.venv/.lock-stamp
want=$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing locked dependencies (requirements/lock.txt)"
  .venv/bin/uv pip install --quiet --python .venv/bin/python -r requirements/lock.txt
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
fi
