# Two commands matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint typecheck unit system-deps clean

# What running needs, and nothing more (no test tools, no browser driver).
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

# ...and what the tests need on top.
$(STAMP): $(RUN_STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Starts the service on its embedded defaults (SQLite in MAILWRIGHT_HOME, in-process worker).
# Ctrl-C stops it in order (exit 0).
run: $(RUN_STAMP)
	@$(BIN)/mailwright serve

# Installs what the tests need (Debian packages included; axe-core from npm, pinned by its lock
# file, for the accessibility checks), then lint, types, layers and the whole suite.
test: system-deps $(STAMP)
	npm ci --prefix tests/axe --no-audit --no-fund
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# The suite starts `mailwright` and helper processes hundreds of times; where
	@# PYTHONDONTWRITEBYTECODE is set, each would compile every module again (2 s, not 0.5 s).
	$(BIN)/python -m compileall -q -j 0 src tests
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
