# The two commands of the README: `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
BIN := .venv/bin
PYTEST_ARGS ?=

.PHONY: demo test compose-test bench lint deps services clean

deps:
	@scripts/bootstrap.sh system
	@scripts/bootstrap.sh python

services:
	@scripts/bootstrap.sh services

demo: deps services
	$(BIN)/hub demo

# pytest exits 5 when it collects nothing: that is a failure here as everywhere else.
# Whatever happens, the embedded Asterisk is stopped and unmounted afterwards; then the
# container test runs (it needs neither) and either failing fails `make test`.
test: deps services lint
	$(BIN)/pytest $(PYTEST_ARGS); status=$$?; scripts/asterisk.sh down; HUB_ASTERISK_INSTANCE=2 scripts/asterisk.sh down; \
	PYTHON=$(BIN)/python scripts/compose-test.sh || status=1; exit $$status

# The production compose file run for real (docker.io + docker-compose from apt, local
# Debian bases, host networking): one voice broadcast and one email through the containers.
compose-test: deps services
	PYTHON=$(BIN)/python scripts/compose-test.sh

# Every benchmark (3 trials each; voice ones need the embedded Asterisk and SIPp), writing
# bench/results.json and the README's table. `make bench BENCH_ARGS=--quick` is a smoke run.
BENCH_ARGS ?=
bench: deps services
	ulimit -n 65536 2>/dev/null || echo "bench: could not raise the open-files limit to 65536" \
	  "(it is $$(ulimit -n)): voice_capacity's phones may fail before the hub does" >&2; \
	  $(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint:
	$(BIN)/ruff check hub tests bench
	$(BIN)/mypy

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
