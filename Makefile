# The few commands everybody runs. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
HOST   ?= 127.0.0.1

.PHONY: run test lint types check audit lock demo-links bench system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Every install takes the exact versions (and hashes) of the lock in requirements/: the runtime
# lock for `make run` and a server, the test lock (runtime versions plus the test tools) for
# `make test` and CI. `make lock` regenerates all three from pyproject.toml.
PIP_LOCKED := $(BIN)/pip install --quiet --require-hashes --no-deps

$(VENV)/.runtime: requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(PIP_LOCKED) -r requirements/runtime.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.test: requirements/test.txt pyproject.toml | $(BIN)/python
	$(PIP_LOCKED) -r requirements/test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.runtime

## make run: set up, then serve vio with demo data on the embedded SQLite database
run: $(VENV)/.runtime
	$(BIN)/vio serve --demo --host $(HOST) --port $(PORT)

## make demo-links: print the demo's sign-in links (for the server `make run` started)
demo-links: $(VENV)/.runtime
	VIO_PUBLIC_BASE_URL=http://$(HOST):$(PORT) $(BIN)/vio demo-links

## make test: set up (Python packages, Chromium), then lint, type-check and run the whole suite
test: $(VENV)/.test system-packages lint types
	$(BIN)/python -m pytest

# Debian packages the tests drive: the browser, network namespaces and filtering, HTTPS in
# front (Caddy), TURN (coturn) and its certificate (certbot), and encrypted backups (age,
# sqlite3, pg_dump). Installed only when one is missing.
SYSTEM_PACKAGES := chromium util-linux iproute2 nftables caddy coturn certbot age sqlite3 postgresql-client

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

lint: $(VENV)/.test
	$(BIN)/ruff check vio tests bench run.py

types: $(VENV)/.test
	$(BIN)/mypy vio

$(VENV)/.bench: requirements/bench.txt pyproject.toml | $(BIN)/python
	$(PIP_LOCKED) -r requirements/bench.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.test $(VENV)/.runtime

## make bench: the benchmarks' quick runs (see docs/benchmarks.md for full runs); the forwarding
## run compares Janus (Debian's janus, installed here when missing) in a network namespace
bench: $(VENV)/.bench
	dpkg -s janus >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y janus)
	$(BIN)/python bench/forwarding.py --quick --janus
	$(BIN)/python bench/room.py --quick
	$(BIN)/python bench/signaling.py --quick
	$(BIN)/python bench/attendance.py --quick

check: lint types

## make audit: check every locked version against the PyPI advisory database (pip-audit)
audit: $(VENV)/.test
	$(BIN)/pip-audit --strict --progress-spinner off --require-hashes --disable-pip \
		-r requirements/runtime.txt -r requirements/test.txt

## make lock: regenerate requirements/*.txt from pyproject.toml (latest versions the floors allow)
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	--universal --quiet
lock: | $(BIN)/python
	$(BIN)/pip install --quiet uv
	UV_NO_CONFIG=1 $(UV_COMPILE) -o requirements/runtime.txt
	UV_NO_CONFIG=1 $(UV_COMPILE) --extra test -c requirements/runtime.txt -o requirements/test.txt
	UV_NO_CONFIG=1 $(UV_COMPILE) --extra test --extra bench -c requirements/test.txt \
		-o requirements/bench.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
