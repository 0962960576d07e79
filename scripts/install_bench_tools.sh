#!/usr/bin/env bash
# Installs the peers the benchmark compares against (bench/README.md):
#   - nginx and wrk from Debian's packages (the benchmark never uses a system nginx
#     service: it runs a private instance with its own conf, pid, log and temp files);
#   - the LiteLLM proxy in its own virtual environment .venv-litellm, pinned by
#     bench/requirements-litellm.txt, so its many dependencies never touch .venv;
#   - matplotlib for the trace benchmark's plot, pinned by bench/requirements-trace.txt,
#     into .venv (bench-only: nothing of the gateway imports it);
#   - py-spy for bench/profile.py, pinned by bench/requirements-profile.txt, into .venv.
# Idempotent: what is already there is left as it is.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if [ "${#need_apt[@]}" -gt 0 ]; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    # Other jobs may hold the dpkg lock for a while: wait for it rather than fail.
    "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        "${need_apt[@]}"
fi

venv=.venv-litellm
python_bin="${PYTHON:-python3}"
if [ ! -x "$venv/bin/litellm" ]; then
    "$python_bin" -m venv "$venv"
    "$venv/bin/pip" install -q -r bench/requirements-litellm.txt
fi
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
    .venv/bin/pip install -q -r bench/requirements-trace.txt
fi
if [ ! -x .venv/bin/py-spy ]; then
    .venv/bin/pip install -q -r bench/requirements-profile.txt
fi
echo "nginx: $(/usr/sbin/nginx -v 2>&1 | sed 's/.*nginx\///')"
echo "wrk: $(wrk -v 2>&1 | head -n1 | awk '{print $2}')"
echo "litellm: $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
echo "matplotlib: $(.venv/bin/python -c 'import matplotlib; print(matplotlib.__version__)')"
echo "py-spy: $(.venv/bin/py-spy --version | awk '{print $2}')"
