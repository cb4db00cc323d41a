#!/usr/bin/env bash
# `make gpu-check`: installs what the GPU machine's image lacks (datasets, pydantic,
# optuna and their dependencies) from the wheels in .whl/ (bench/fetch_gpu_wheels.sh
# downloads them where pip reaches PyPI), then runs bench/gpu_check.py.
#   DEVICE=cpu      the CPU smoke run at a tiny shape (FLOOD_GPU_CHECK_DEVICE=cpu)
#   OUT=folder      where the JSON goes (default bench/results/gpu-check-DATE.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -n "${DEVICE:-}" ]; then
    export FLOOD_GPU_CHECK_DEVICE=$DEVICE
fi
NEEDED="import datasets, pydantic, optuna"
if ! "$PYTHON" -c "$NEEDED" 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "gpu-check: datasets, pydantic or optuna cannot be imported and there is no .whl/ folder; run bench/fetch_gpu_wheels.sh where pip reaches PyPI and bring .whl/ along" >&2
        exit 2
    fi
    SITE=${GPU_CHECK_SITE:-/tmp/flood-gpu-check-site}
    echo "gpu-check: installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE" >&2
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    if ! "$PYTHON" -c "$NEEDED"; then
        echo "gpu-check: the wheels in .whl/ installed but do not import (above: which one, and why); fetch versions that fit this machine's packages with bench/fetch_gpu_wheels.sh" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PYTHON" bench/gpu_check.py "$@"
