# MicroDiT Workbench: `make demo` and `make test` work from a fresh clone.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP   := $(VENV)/.installed

.PHONY: setup demo lint test test-fast bench gpu-check clean

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned by constraints.txt: a plain `torch` requirement would pull a multi-GB CUDA build
$(STAMP): pyproject.toml constraints.txt kernels/workbench/kernel.json | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(VENV)/bin/workbench kernel install
	touch $(STAMP)

setup: $(STAMP)

# the GPU profile (8x the steps) when torch sees a GPU, else the CPU demo
DEMO_CONFIG = $(shell $(PY) -c "import torch; print('configs/demo-gpu/pipeline.yaml' if torch.cuda.is_available() else 'configs/demo/pipeline.yaml')" 2>/dev/null || echo configs/demo/pipeline.yaml)

demo: setup
	$(VENV)/bin/workbench pipeline --config $(DEMO_CONFIG)

# the lint rules are in pyproject.toml ([tool.ruff]); docs/architecture.md says why there is no `ruff format`
lint: setup
	$(VENV)/bin/ruff check workbench tests

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

bench: setup
	$(VENV)/bin/workbench bench model --json docs/bench/model.json

# where a GPU is lent: tests/train/test_gpu.py and the xl_2 figures, outputs under $OUT; elsewhere one line, exit 0
# (no set-up step: a lent machine has no registry; the script uses .venv when there, else the image's python3)
gpu-check:
	scripts/gpu-check

clean:
	rm -rf $(VENV) .pytest_cache
