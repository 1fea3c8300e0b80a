PYTHON ?= python3
# Test processes: the suite mostly waits (on budgets, workers, the network), so more
# processes than cores pay; each has its own redis-server, sandbox and ports.
TEST_PROCESSES ?= 4
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint check run clean redis-server promtool node-example

# redis-server must be on PATH (the tests start their own; `run` starts one if needed).
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing redis-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "make: redis-server is needed: sudo apt-get install redis-server" >&2; exit 1; fi; }

# promtool checks the alert rules in ops/prometheus (Debian's prometheus package has it).
promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing prometheus (for promtool)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "make: promtool is needed: sudo apt-get install prometheus" >&2; exit 1; fi; }

# Node.js and the npm packages of examples/node (celery-node), which tests/test_examples.py
# runs against real workers.
node-example: examples/node/node_modules/.installed

examples/node/node_modules/.installed: examples/node/package-lock.json
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing nodejs and npm (for the Node.js example)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	  else echo "make: npm is needed for the Node.js example: sudo apt-get install nodejs npm" >&2; exit 1; fi; }
	cd examples/node && npm ci --silent --no-audit --no-fund
	touch $@

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

test: install lint redis-server promtool node-example
	$(BIN)/pytest -n $(TEST_PROCESSES)

run: install redis-server
	$(BIN)/cancel-worker run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (issue 7): `bench` writes BENCHMARKS.md and benchmarks/plot.png; `bench-smoke`
# runs the same code on small samples (into a temp dir) and fails only if the bench breaks.
.PHONY: bench bench-smoke

$(VENV)/.bench-installed: $(BIN)/cancel-worker pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed redis-server
	$(BIN)/python -m benchmarks

bench-smoke: $(VENV)/.bench-installed redis-server
	$(BIN)/python -m benchmarks --smoke
