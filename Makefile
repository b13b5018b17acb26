# The README's two commands: `make quickstart` and `make test`. Each installs what it needs into .venv.
VENV ?= .venv
TORCH_INDEX_URL ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEEPSPEED_DIR := $(VENV)/deepspeed
DEEPSPEED_PACKAGES := deepspeed==0.19.8 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0 einops==0.8.2

.PHONY: install quickstart test lint format bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first. Where pip is set up for CPU wheels, torch==2.13.0 is the CPU build; PyPI's own Linux
	# wheel is the CUDA build (several GB): TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes
	# the CPU build from PyTorch's index instead.
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e ".[offline,dev]"
	# DeepSpeed (Linux) for the tests of training under it, in a folder of its own that only those
	# tests put on the path: once importable, every process that saves a model imports it (seconds).
	if [ "$$(uname -s)" = Linux ]; then $(PY) -m pip install --quiet --no-deps --target $(DEEPSPEED_DIR) $(DEEPSPEED_PACKAGES); fi
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/distill run recipes/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check distill tests benchmarks
	$(VENV)/bin/ruff format --check distill tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format distill tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py
