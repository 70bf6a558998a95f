# Appliance — the commands a self-hoster, a tester and CI type.
#   make run     HTTPS on https://localhost:8443 with a local CA, embedded store, demo data
#   make test    everything the tests need (Debian packages, a venv), then the whole suite
#   make test-fast  the suite without Chromium, Pebble and the binary build, two workers a core
#                (under 2 min on 2 cores: docs/performance.md, "The test suite")
#   make test-postgres  the tests of the in-process appliance (tests/support/app.py) again, on a
#                PostgreSQL store (APPLIANCE_TEST_STORE=postgres: a fresh database per state dir;
#                3 to 6 min on 2 cores; `make test` runs it after the suite)
#   make lint    ruff, mypy --strict on appliance/, ESLint on the console's JavaScript
#   make binary  dist/appliance, one file (PyInstaller)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages (installed with apt-get when missing; root or sudo): what `make run` needs, and
# what the test suite needs.
RUN_DEBS  := python3-venv
TEST_DEBS := python3-venv openssl binutils postgresql mariadb-server chromium pebble systemd
FAST_DEBS := python3-venv openssl postgresql mariadb-server systemd
# What test-fast leaves out, by mark (pyproject.toml): the browser tests (`browser`: Chromium), the
# ACME tests against Pebble (`pebble`) and the binary build (`slow`). tests/test_suite_marks.py
# fails when a file that starts Chromium or Pebble lacks its mark.
FAST_SKIP := -m "not slow and not browser and not pebble"

# $(call install_debs,PACKAGES): apt-get install those not installed yet.
define install_debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
endef

.PHONY: run test test-fast test-postgres lint binary run-deps system-deps fast-deps node-deps venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,binary]'
	touch $@ $(VENV)/.installed-run

venv: $(VENV)/.installed

run: run-deps $(VENV)/.installed-run
	$(BIN)/appliance serve --dev

run-deps:
	$(call install_debs,$(RUN_DEBS))

system-deps:
	$(call install_debs,$(TEST_DEBS))

fast-deps:
	$(call install_debs,$(FAST_DEBS))

# The kill-at-random runs of `appliance keys` (tests/test_keys_cli.py): 8 kills each by default,
# 20 in `make test` (KEYRING_KILL_LOOPS=N on the command line for more).
KEYRING_KILL_LOOPS ?= 20

# The whole suite, then the in-process appliance's tests again on a PostgreSQL store (the same
# promises on both stores; about 4 more minutes on 2 cores). The scale tests run at the sizes
# their promises name (APPLIANCE_TEST_FULL_SCALE=1: tests/support/scale.py); test-fast runs them
# at a tenth.
test: system-deps lint
	KEYRING_KILL_LOOPS=$(KEYRING_KILL_LOOPS) APPLIANCE_TEST_FULL_SCALE=1 \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-postgres

# Two workers per core: the suite waits on subprocesses (servers starting, heartbeats, polls) for
# a good part of its time; on 2 cores 4 workers took 2 min 55 s where 2 took 3 min 36 s, for the
# same CPU, and 6 took longer than 4 (3 min 19 s against 3 min 1 s, for 335 s of CPU against
# 289 s: docs/performance.md). worksteal: a worker that runs out of tests takes some of
# another's, so that the slow subprocess tests (they cluster in a few files) do not leave a core
# idle at the end.
FAST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))
test-fast: fast-deps lint
	$(BIN)/python -m pytest -n $(FAST_WORKERS) --dist worksteal $(FAST_SKIP) $(PYTEST_ARGS)

# The files that start an appliance through tests/support/ (app, acme, queries): the ones
# APPLIANCE_TEST_STORE=postgres moves onto a PostgreSQL store. Tests about the SQLite file itself
# are marked `sqlite_store` and skipped there.
POSTGRES_STORE_TESTS = $(shell grep -l 'tests\.support\.\(app\|acme\|queries\)' tests/test_*.py)

test-postgres: fast-deps $(VENV)/.installed
	APPLIANCE_TEST_STORE=postgres $(BIN)/python -m pytest -n auto --dist worksteal \
	  $(POSTGRES_STORE_TESTS) $(PYTEST_ARGS)

lint: $(VENV)/.installed node_modules/.installed
	$(BIN)/ruff check appliance tests bench
	$(BIN)/mypy
	node_modules/.bin/eslint appliance/console/static

# The console's linter (ESLint, from the npm registry; package-lock.json pins it). Node.js and npm
# come from Debian when the machine has none.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory node-deps
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps:
	$(call install_debs,nodejs npm)

binary: $(VENV)/.installed
	$(BIN)/python build/stamp_commit.py
	$(BIN)/pyinstaller --noconfirm --clean --distpath dist --workpath build/build build/appliance.spec; \
	  status=$$?; rm -f appliance/_build_commit.py; exit $$status

clean:
	rm -rf $(VENV) dist build/build .pytest_cache node_modules
