#!/usr/bin/env bash
# CI step: the Docker suite (tests/docker, marker "docker") against a private engine.
#
#   scripts/ci_extra_docker.sh
#
# Starts the engine of scripts/docker_engine.sh (installing Debian's docker.io the
# first time, which needs root), runs the suite with DOCKER_TESTS_REQUIRED=1 so that
# an engine that is not there fails the run instead of skipping it, and always stops
# the engine again, whatever happened. Exits with pytest's status.
#
# The fake-backend image the tests run is built locally by the suite itself
# (scripts/build_fake_image.sh); no registry other than Debian's and PyPI is needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ENGINE="$ROOT/scripts/docker_engine.sh"

log() { printf 'ci_extra_docker: %s\n' "$*" >&2; }

stop_engine() {
    local status=$?
    # Stopping must not hide the suite's result, nor fail a green run.
    "$ENGINE" stop || log "stopping the engine failed (status $?)"
    exit "$status"
}

if [ ! -x .venv/bin/pytest ]; then
    # A clean clone run on its own, without .ci/run having set up the venv first.
    log "no .venv: creating it"
    python3 -m venv .venv
    PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/pip install -q -e '.[test]'
fi

# From here on the engine may be (half) started: the trap takes it down again.
trap stop_engine EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

env_line="$("$ENGINE" start)"
eval "$env_line"
export DOCKER_HOST
log "engine at $DOCKER_HOST"

status=0
DOCKER_TESTS_REQUIRED=1 .venv/bin/pytest -m docker tests/docker -q || status=$?
if [ "$status" != 0 ]; then
    log "pytest exited with $status; last lines of the engine's log:"
    tail -n 30 "$ROOT/var/docker/dockerd.log" >&2 || true
fi
exit "$status"
