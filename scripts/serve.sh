#!/usr/bin/env bash
# Set up .venv-service with the service extra only (no torch) and serve exported/ on port 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-service/bin/python ] || "$PYTHON" -m venv .venv-service
.venv-service/bin/python -m pip install -q -e '.[service]'
exec .venv-service/bin/striate serve "$@"
