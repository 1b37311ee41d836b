#!/usr/bin/env bash
# The whole test suite from a fresh machine: system packages, virtualenv, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-system-packages.sh
bash scripts/ensure-venv.sh test
# Use the machine's PostgreSQL when one answers on 127.0.0.1:5432; otherwise the fixture starts
# a private cluster with initdb.
if [ -z "${CORRESPOND_TEST_POSTGRES_URL:-}" ] && command -v pg_isready >/dev/null \
   && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  export CORRESPOND_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/postgres"
fi
# The slowest tests are printed so the 20-minute budget is watched on every CI run.
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=25 "$@"
