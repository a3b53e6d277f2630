#!/usr/bin/env bash
# The prepared GPU check, one command on a GPU machine (about 6 minutes):   bench/gpu_check.sh OUT_DIR
# Where ray, optuna and sqlalchemy are missing (the lent GPU machines), carry them as wheels in .whl/
# (made with ../shared/device/make_wheels.sh): this installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import ray, optuna, sqlalchemy" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
exec python3 -m bench.gpu_check "$@"
