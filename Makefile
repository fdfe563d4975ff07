# Contract targets: `make demo`, `make test`, `make bench` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install services test lint demo bench clean

help:
	@echo "make demo      release examples/backend to the local Docker host"
	@echo "make test      the whole test suite against real services"
	@echo "make bench     benchmarks -> bench/results.json"
	@echo "make services  install/start Docker, registry, PostgreSQL (root)"
	@echo "make lint      ruff"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

services:
	scripts/services.sh all

# Independent tests run in parallel (pytest-xdist); tests sharing an expensive fixture
# (a Prefect server, the AWS emulator, a module's images) or a session-wide check (the
# fault suite's secrets scan) stay together (xdist_group). TEST_WORKERS=1 runs serially.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	scripts/services.sh all
	$(PY) examples/demo.py

bench: $(STAMP)
	scripts/services.sh all
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) bench/results.json
