# ck_dagster: `make demo` to see it work, `make check` (a minute) or `make test` (the whole
# suite) to check it, `make bench` for figures.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch's CPU build (the CUDA one is several GB; on a GPU cluster install yours first).
TORCH ?= torch==2.13.0
DEMO_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo check test bench ui slurm-up slurm-down clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## demo: train and evaluate a tiny model end to end on this machine, then open the UI
demo: $(VENV)/.installed
	$(VENV)/bin/ck-dagster demo --home $(DEMO_HOME)

## check: lint, format check and the unit tests (pure: no process, cluster or model), in a minute
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m unit -q

## test: `make check`, then the whole test suite (starts a local SLURM cluster when run as root)
test: check
	@if [ "$$(id -u)" = 0 ]; then bash scripts/local-slurm/start.sh; \
	else echo "not root: SLURM tests need a running cluster (see README)"; fi
	$(PY) -m pytest

## bench: every benchmark in bench/, then one table of figures and ratios
bench: $(VENV)/.installed
	@if [ "$$(id -u)" = 0 ]; then bash scripts/local-slurm/start.sh; fi
	$(PY) bench/run_all.py

## ui: the Dagster UI on the demo instance
ui: $(VENV)/.installed
	DAGSTER_HOME=$(DEMO_HOME) $(VENV)/bin/dagster dev -w workspace.yaml

slurm-up:
	bash scripts/local-slurm/start.sh

slurm-down:
	bash scripts/local-slurm/stop.sh

clean-demo:
	rm -rf $(DEMO_HOME) demo
