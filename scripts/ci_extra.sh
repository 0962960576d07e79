#!/usr/bin/env bash
# The suites that need more than the gateway's own venv: real vLLM (CPU build), a real Docker
# engine, a local Ray cluster, headless Chromium, and the benchmark in smoke mode. Each
# installs what it needs from the project's own files. Run from the repository root (.ci/run
# calls it after the fast suite).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "real vLLM: install the CPU stack into .venv-vllm"
bash scripts/install_vllm.sh
step "real vLLM: the gateway in front of real vLLM servers"
VLLM_TESTS_REQUIRED=1 .venv/bin/python -m pytest -m vllm tests/vllm -q

step "Docker: private engine, fake-backend image, launcher and gateway tests"
bash scripts/ci_extra_docker.sh

step "Ray: a local cluster of several nodes, the gateway placing fake backends on them"
bash scripts/ci_ray.sh

step "browser: Debian Chromium, dashboard test"
bash scripts/install_browser.sh
BROWSER_TESTS_REQUIRED=1 .venv/bin/python -m pytest -m browser tests/browser -q

step "benchmark smoke run: every peer answers as direct does; fails if gateway/bare CPU per request is over 2x the recorded ratio"
bash scripts/install_bench_tools.sh
.venv/bin/python -m bench.proxy --smoke

step "wake benchmark smoke run: a cold start and wakes from levels 1 and 2 answer"
.venv/bin/python -m bench.wake --smoke

step "trace benchmark smoke run: every request answered, nothing over-committed"
.venv/bin/python -m bench.trace --smoke
