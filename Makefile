PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint check run clean

$(BIN)/cancel-worker: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@

install: $(BIN)/cancel-worker

lint: install
	$(BIN)/ruff check worker tests benchmarks
	$(BIN)/ruff format --check worker tests benchmarks
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest

run: install
	$(BIN)/cancel-worker run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (issue 7): `bench` writes BENCHMARKS.md and benchmarks/plot.png; `bench-smoke`
# runs the same code on small samples (into a temp dir) and fails only if the bench breaks.
.PHONY: bench bench-smoke

$(VENV)/.bench-installed: $(BIN)/cancel-worker pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

bench-smoke: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks --smoke
