#!/usr/bin/env bash
# Tools the benches need beyond the Python environment: wrk, the C load generator of
# bench/service_bench.py's every-core section (a Python client would take a core's share itself).
set -euo pipefail
command -v wrk >/dev/null && { echo "wrk: $(command -v wrk)"; exit 0; }
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "wrk is missing: install it with your package manager (Debian: apt-get install wrk)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
echo "wrk: $(command -v wrk)"
