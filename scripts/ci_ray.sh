#!/usr/bin/env bash
# CI step: the Ray suite (tests/ray, marker "ray") on a real local Ray cluster of several
# nodes on this machine, with fake backends as the model servers.
#
#   scripts/ci_ray.sh
#
# Ray goes into its own venv (.venv-ray, or RAY_VENV), so the gateway's .venv stays without
# it: the gateway is installed there editable with its [test,ray] extras, and the suite runs
# from it (every node of the test cluster runs that venv's Python, as a real cluster's
# nodes must run the gateway's exact Ray). RAY_TESTS_REQUIRED=1 makes a missing Ray a
# failure instead of a skip. Each test starts and stops its own cluster under a temporary
# directory and on free ports, so nothing else on the machine is touched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${RAY_VENV:-$ROOT/.venv-ray}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 RAY_USAGE_STATS_ENABLED=0

log() { printf 'ci_ray: %s (%s)\n' "$*" "$(date +%T)" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
log "installing the gateway with [test,ray] into $VENV"
"$VENV/bin/pip" install -q -e '.[test,ray]'
"$VENV/bin/python" -c 'import ray; print("ci_ray: ray", ray.__version__)'

log "running the ray suite"
RAY_TESTS_REQUIRED=1 "$VENV/bin/python" -m pytest -m ray tests/ray -q
