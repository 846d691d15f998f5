#!/usr/bin/env bash
# Start the local PostgreSQL cluster if nothing answers on 127.0.0.1:5432.
set -uo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: pg_isready not found; install PostgreSQL or set TRIAGE_TEST_POSTGRES_URL" >&2
  exit 0
fi
if ready; then exit 0; fi
echo "ensure-postgres: PostgreSQL is down, starting it"
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for v in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  done
fi
for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:5432" >&2
exit 1
