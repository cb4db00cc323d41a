#!/usr/bin/env bash
# Create the virtual environment and install flood with its test tools.
#
# torch comes first, and only when the environment has none: a torch that is already
# there (say a CUDA build, seen through VENV_ARGS=--system-site-packages) is kept.
# A machine without an NVIDIA GPU gets the CPU build of torch, never the multi-GB CUDA
# wheel that a bare `pip install torch` would pull from PyPI.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv ${VENV_ARGS:-} "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet "$@"; }

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing torch with CUDA"
        pip_install "torch>=2.2"
    else
        echo "setup: no NVIDIA GPU, installing the CPU build of torch $TORCH_VERSION"
        # A local or configured wheel of the CPU build first (this is how machines with a
        # wheel cache or a mirror get it offline), else PyTorch's own CPU index.
        pip_install "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
            || pip_install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
pip_install -e ".[dev]"

echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
