#!/usr/bin/env bash
# Creates .venv if missing and installs the project with its pinned dependencies. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
