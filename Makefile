# Two commands from a fresh machine: `make run` and `make test`.
# The venv lives at .venv and is rebuilt only when pyproject.toml changes
# (the stamp file records which pyproject it was built from).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup run test bench gpu-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned, so the resolver never reaches for a newer multi-GB build
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(VENV)/bin/trainboard serve

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/train_throughput.py

# The worker's dependencies that the GPU machine's Python lacks, as binary wheels for its
# CPython 3.12 (bench/gpu-deps.txt), for bench/gpu_check.py's end-to-end step. Needs PyPI.
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64,--platform $(p))
gpu-deps: setup
	rm -rf .gpu-deps
	$(PY) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
		--python-version $(GPU_PYTHON_VERSION) $(GPU_PLATFORMS) -d .gpu-deps -r bench/gpu-deps.txt

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
