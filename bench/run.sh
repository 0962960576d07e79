#!/usr/bin/env bash
# The proxy benchmark in one command, from any folder:
#   bench/run.sh                      full run (about three minutes)
#   bench/run.sh --smoke              seconds; checks the harness, not the timings
#   bench/run.sh --only direct,gateway
# Peers that are missing are skipped with a note: scripts/install_bench_tools.sh installs them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m bench.proxy "$@"
