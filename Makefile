# Contract targets: `make demo`, `make test`, `make bench` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STARTED := $(shell date +%s)

# Prefect's telemetry (the server's heartbeat to Prefect, the SDK's and the UI's events) is
# off in everything started from here: offline it only logs "Failed to send telemetry".
# Turn it on with `make demo PREFECT_SERVER_ANALYTICS_ENABLED=true` (or in the environment).
PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED

.PHONY: help install services test lint demo ui down bench clean

help:
	@echo "make demo      release examples/backend to the local Docker host; UI on :4200"
	@echo "make test      the whole test suite against real services"
	@echo "make ui        start (or reuse) the local Prefect server and worker, print the URL"
	@echo "make down      stop the local Prefect server and worker"
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
	scripts/services.sh all browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	scripts/services.sh all
	scripts/local-prefect.sh up
	scripts/local-prefect.sh exec $(PY) examples/demo.py
	@echo "make demo took $$(( $$(date +%s) - $(STARTED) )) s"

ui: $(STAMP)
	scripts/local-prefect.sh up

down:
	scripts/local-prefect.sh down

bench: $(STAMP)
	scripts/services.sh all
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) bench/results.json
