#!/usr/bin/env bash
# Runs the product from a fresh machine: a virtualenv, the package, `correspond serve` on SQLite
# under ./var (created on first start, with its encryption key).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-venv.sh
exec .venv/bin/correspond serve "$@"
