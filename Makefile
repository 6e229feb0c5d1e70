# Seedline — the two commands are `make dev` and `make test`; everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install dev test lint typecheck buf-lint buf-breaking gen gen-check baseline pytest bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' -e clients/python
	touch $(STAMP)

install: $(STAMP)

## Start the whole local stack: embedded PostgreSQL, migrations, gRPC server, Envoy (Ctrl-C stops it).
dev: install
	$(BIN)/seedline dev

## Everything CI checks.
test: install lint typecheck buf-lint buf-breaking gen-check pytest

lint: install
	$(BIN)/ruff check src tests tools bench clients
	$(BIN)/ruff format --check src tests tools bench clients

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy -p seedline_client

buf-lint: install
	$(BIN)/python tools/gen.py image $(VENV)/contract.binpb
	$(BIN)/buf lint $(VENV)/contract.binpb --config buf.yaml

## Wire and JSON compatibility against the committed baseline; refresh it with `make baseline`.
buf-breaking: install
	$(BIN)/python tools/gen.py image $(VENV)/contract.binpb
	$(BIN)/buf breaking $(VENV)/contract.binpb --against gen/contract-baseline.binpb --config buf.yaml

## An intended breaking change: refresh the baseline in the same commit as the proto change.
baseline: install
	$(BIN)/python tools/gen.py image gen/contract-baseline.binpb

gen: install
	$(BIN)/python tools/gen.py all

CLIENT_GEN := clients/python/src/seedline_client/_generated

## Fails when gen/ or the client's generated code differs from what proto/ generates.
gen-check: gen
	@if [ -n "$$(git status --porcelain -- gen $(CLIENT_GEN))" ]; then \
	  git status --short -- gen $(CLIENT_GEN) | head -20; \
	  echo "gen/ or $(CLIENT_GEN) is stale: run 'make gen' and commit them with the proto change"; exit 1; fi

pytest: install
	$(BIN)/pytest -q -p no:cacheprovider

## Every benchmark, one after the other (they print figures, they assert nothing).
bench: install
	$(BIN)/python bench/bench_rpc.py
	$(BIN)/python bench/bench_inventory.py
	$(BIN)/python bench/bench_integrations.py
	$(BIN)/python bench/bench_telemetry.py
	$(BIN)/python bench/bench_ingest_cpu.py

clean:
	rm -rf $(VENV) .seedline
