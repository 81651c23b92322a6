# PutPlace: the two commands are `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A virtualenv on the interpreter a user deploys PutPlace on (scripts/find-bench-python.sh),
# which the benchmarks run in and `compat` tests: the main suite needs Python >= 3.13
# (mongoeco), which this machine has only as a source build without PGO or LTO.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: run test setup lint typecheck pytest compat bench clean FORCE

# Create the virtualenv and install PutPlace with every extra and the test tools (re-run
# only when pyproject.toml changes; byte-compiled at install, as pip does, so ppclient
# does not compile its libraries at every start), and the system tools the benchmarks
# and tests use: restic, wrk, redis-server, promtool (Debian package prometheus) and
# valgrind, with apt-get and only when one is missing.
setup: $(STAMP)
	@scripts/install-test-tools.sh

$(STAMP): pyproject.toml
	@PY=$$(scripts/find-python.sh) || exit 1; \
	  [ -x $(BIN)/python ] || $$PY -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	@touch $(STAMP)

# Start the server on the embedded defaults (SQLite + ./putplace-data).
run: setup
	@echo "PutPlace server on http://$${PUTPLACE_HOST:-127.0.0.1}:$${PUTPLACE_PORT:-8000} (docs at /docs); data in ./putplace-data unless configured"
	@echo "First API key:  $(BIN)/ppserver keys create --name admin --scope admin"
	$(BIN)/ppserver serve

# Lint, format check, strict type check, every test, then the core tests again on the
# deployment interpreter (compat, below).
test: setup lint typecheck pytest compat

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

# Three test processes (pytest-xdist) on the CI machine's two cores: most tests wait on
# servers and subprocesses. On 2026-12-05, with the machine slower than ever per CPU-second,
# two took 17 min 41 s of pytest and three 11 min 26 s (the cores 87% busy on average).
PYTEST_WORKERS ?= 3
pytest:
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The interpreter $(BENCH_VENV) was made on. Checked at every use: when
# find-bench-python.sh names another (BENCH_PYTHON set or changed), the virtualenv is made
# anew on it; the file is rewritten only then, so an unchanged one leaves the stamp alone.
BENCH_MADE_ON := $(BENCH_VENV)/.interpreter
$(BENCH_MADE_ON): FORCE
	@PY=$$(scripts/find-bench-python.sh) || exit 1; \
	  if [ "$$(cat $@ 2>/dev/null)" != "$$PY" ]; then \
	    if [ -e $(BENCH_VENV) ]; then echo "$(BENCH_VENV): made anew on $$PY"; fi; \
	    rm -rf $(BENCH_VENV) && mkdir -p $(BENCH_VENV) && echo "$$PY" > $@; \
	  fi

$(BENCH_STAMP): pyproject.toml $(BENCH_MADE_ON) | $(STAMP)
	@[ -x $(BENCH_VENV)/bin/python ] || $$(cat $(BENCH_MADE_ON)) -m venv --without-pip $(BENCH_VENV)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BENCH_VENV)/bin/python -e '.[dev]'
	@touch $(BENCH_STAMP)

# The core paths' tests again (end to end, the client against the real server, bundles,
# records; about 30 s), on the interpreter the benchmarks run PutPlace on: most
# deployments run it on their distribution's Python (Debian 12: 3.11), not the tests'
# 3.13. The MongoDB stack is left out: its test server (mongoeco) needs 3.13.
COMPAT_TESTS := tests/e2e tests/client/test_against_server.py tests/api/test_bundles.py \
	tests/metadata/test_sqlite_binding.py \
	tests/api/test_files.py
# Without such an interpreter (BENCH_PYTHON unset, no /usr/bin/python3 >= 3.11) they are
# skipped with a warning, except in CI (CI=true), where nothing may be skipped.
compat:
	@if ! scripts/find-bench-python.sh >/dev/null; then \
	  [ "$${CI:-}" = true ] && exit 1; \
	  echo "compat: skipped: no deployment interpreter for .venv-bench (set BENCH_PYTHON)" >&2; \
	  exit 0; \
	fi; \
	$(MAKE) --no-print-directory $(BENCH_STAMP) && \
	$(BENCH_VENV)/bin/pytest -q -n 2 -p no:cacheprovider -k "not mongodb" $(COMPAT_TESTS)

# Every benchmark, on the deployment interpreter; small files also once a round on the
# development one ($(BIN)), so the run shows what the interpreter's build is worth.
bench: setup $(BENCH_STAMP)
	BENCH_ALSO_BIN=$(abspath $(BIN)) $(BENCH_VENV)/bin/python bench/run_all.py

FORCE:

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .pytest_cache .ruff_cache
