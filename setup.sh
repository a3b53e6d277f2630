#!/usr/bin/env bash
# Creates .venv if missing and installs the project with its pinned dependencies. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# The report and dashboard tests open pages in Debian's Chromium (Playwright drives it; it downloads
# no browser). The main job does not need it.
if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; } ||
        echo "setup.sh: could not install chromium; the browser tests of the report and dashboard will fail" >&2
fi
