#!/usr/bin/env bash
# Download, where pip reaches PyPI, the wheels that `make gpu-check` installs on the GPU
# machine (Python 3.12, x86_64, no network). That machine's image has torch,
# transformers, accelerate, typer, rich, pyyaml, matplotlib, pandas, pyarrow, xxhash,
# fsspec, huggingface-hub, pytest and numpy, but not datasets, pydantic or optuna: these
# and the dependencies the image lacks are fetched here, at the versions flood's tests
# pass with, into .whl/ (ignored by git; name it in the device tool's `carry`).
# bench/gpu_check.sh installs them with `pip install --no-index --no-deps --target`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${DEST:-.whl}
WHEELS=(
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19                  # datasets (pyarrow>=24, pandas, xxhash: in the image)
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0
)
# Only wheels, for CPython 3.12 on manylinux x86_64 (pip matches each manylinux tag exactly).
mkdir -p "$DEST"
for wheel in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" "$wheel"
done
# One version of each package, or the install on the GPU machine stops.
duplicates=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_' 'a-z-' | sort | uniq -d)
if [ -n "$duplicates" ]; then
    echo "fetch_gpu_wheels: $DEST holds several versions of: $duplicates; delete $DEST and run this again" >&2
    exit 1
fi
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "fetch_gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $((total / 1024)) KiB in $DEST"
if [ "$total" -gt $((40 * 1024 * 1024)) ]; then
    echo "fetch_gpu_wheels: over 40 MiB; the device tool carries 64 MiB with the working tree" >&2
    exit 1
fi
