#!/usr/bin/env bash
# Installs what the dashboard's browser tests (tests/browser, marker `browser`) need:
#   - Debian's chromium (and its driver), when /usr/bin/chromium is missing;
#   - the Python package playwright, pinned, into the project's .venv.
# Playwright only drives that chromium (executable_path); it never downloads a
# browser of its own, so `playwright install` is deliberately not run.
#
#   scripts/install_browser.sh
#   VENV=/some/venv scripts/install_browser.sh
#
# Needs root (or sudo) for apt-get. A second run with everything in place only checks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PLAYWRIGHT_VERSION="1.65.2"
CHROMIUM="/usr/bin/chromium"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

if [ ! -x "$CHROMIUM" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Package lists may be missing or stale on a fresh machine; one update is enough.
    if ! apt-cache show chromium >/dev/null 2>&1; then
        "${SUDO[@]}" apt-get update -q
    fi
    if ! "${SUDO[@]}" apt-get install -y -q chromium chromium-driver fonts-dejavu-core; then
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" apt-get install -y -q chromium chromium-driver fonts-dejavu-core
    fi
fi
echo "install_browser: $("$CHROMIUM" --version 2>/dev/null)"

if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
    "$VENV/bin/python" -m pip --disable-pip-version-check --no-input \
        install -q --progress-bar off "playwright==$PLAYWRIGHT_VERSION"
fi
echo "install_browser: playwright $PLAYWRIGHT_VERSION in $VENV"
