#!/usr/bin/env bash
# Creates ./.venv with Python 3.11+ and installs Correspond into it (with extras given as $1).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "Correspond needs Python 3.11 or newer ($py not found)" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Correspond needs Python 3.11 or newer")'
# Debian's python3 ships without venv/ensurepip: they come in python3-venv (and the versioned
# python3.X-venv that it pulls in).
if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
  version=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  bash scripts/ensure-system-packages.sh python3-venv "python${version}-venv"
fi
# A .venv without a working pip (left by an interrupted or failed creation) is made again.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  "$py" -m venv --clear .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
