# One command each: `make demo` sets up and trains on the embedded default,
# `make test` sets up and runs the tests. Both work offline on a CPU-only machine.
VENV ?= .venv
BIN := $(VENV)/bin
# The Hugging Face Hub is never needed for the default config or the tests; offline mode
# makes a Hub name that is not cached fail at once instead of after network retries.
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test study gpu-check clean

$(BIN)/flood: pyproject.toml scripts/setup.sh
	VENV=$(VENV) ./scripts/setup.sh
	@touch $@

setup: $(BIN)/flood

demo: setup
	$(BIN)/flood train --config configs/tiny.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m mypy
	./scripts/test_services.sh
	$(BIN)/python -m pytest -q

# The study of docs/study.md: hours on a 2-core CPU (FULL=1 on a GPU for the full size).
study: setup
	./studies/run.sh

# What has never run on a GPU (bf16, compile, the two-pass modes, fused optimizers, the
# oracle's figures, the speed targets), under 8 minutes on one H200; no setup needed there
# (wheels from bench/fetch_gpu_wheels.sh in .whl/). DEVICE=cpu: the tiny smoke run.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHON=$(GPU_PYTHON) DEVICE=$(DEVICE) ./bench/gpu_check.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
