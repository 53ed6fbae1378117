# The few commands everybody runs. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
HOST   ?= 127.0.0.1

.PHONY: run test lint types check demo-links bench system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
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
# front (Caddy) and TURN (coturn). Installed only when one is missing.
SYSTEM_PACKAGES := chromium util-linux iproute2 nftables caddy coturn

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

lint: $(VENV)/.test
	$(BIN)/ruff check vio tests bench run.py

types: $(VENV)/.test
	$(BIN)/mypy vio

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
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

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
