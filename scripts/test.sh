#!/usr/bin/env bash
# Set up .venv with every extra (torch installs from this machine's disk), lint, run the default suite.
# Extra pytest arguments pass through, e.g. `scripts/test.sh -m slow` or `scripts/test.sh tests/test_blocks.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
# The web page tests (tests/test_web_*.py) drive Debian's Chromium with Playwright; install it when missing.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "note: chromium is not installed (apt-get install chromium as root); the web page tests will be skipped"
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check . || echo "note: ruff format would reformat files (not enforced)"
# Everything by default (about 15 minutes here); `scripts/test.sh -m "not slow"` for a quick run.
exec .venv/bin/python -m pytest -ra "$@"
