#!/usr/bin/env bash
# Creates .venv if missing and installs the project with its pinned dependencies. Safe to rerun, and to run
# twice at once (the second waits for the first). Needs no root for the main job.
set -euo pipefail
cd "$(dirname "$0")"
exec 9>.setup.lock
flock 9
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# The report and dashboard tests open pages in Debian's Chromium (Playwright drives it; it downloads no
# browser). The main job does not need it.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } ||
            echo "setup.sh: could not install chromium; the browser tests of the report and dashboard will fail" >&2
    else
        echo "setup.sh: the browser tests need Debian's chromium (as root: apt-get install chromium); the main job does not" >&2
    fi
fi
