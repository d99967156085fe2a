# One-command entry points. `make run` sets everything up on a fresh machine and runs the main job.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIPELINE ?= pipelines/digits_kd.yaml

.PHONY: venv run test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

run: venv
	$(BIN)/kdcache run $(PIPELINE)

test: venv
	$(BIN)/python -m pytest -ra

lint: venv
	$(BIN)/ruff check kdcache tests data
	$(BIN)/ruff format --check kdcache tests data pipelines
	$(BIN)/mypy

bench: venv
	$(BIN)/kdcache bench --out runs/bench

clean:
	rm -rf runs .pytest_cache
