#!/usr/bin/env bash
# Creates ./.venv with Python 3.11+ and installs Correspond into it (with extras given as $1).
set -euo pipefail
extras=${1:-}
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Correspond needs Python 3.11 or newer")'
  "$py" -m venv .venv || {
    echo "python3 -m venv failed; on Debian install it with: apt-get install python3-venv" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
