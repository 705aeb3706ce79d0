# Every target bootstraps .venv on a fresh machine (pinned ranges from pyproject.toml).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make demo` installs only the router (no test, browser or benchmark packages); the other
# targets add the extras they need. ARGS passes flags: make demo ARGS='--attestation fresh'.
DEMO_STAMP := $(VENV)/.installed-demo
ARGS ?=

.PHONY: demo test lint fmt bench clean venv compiled

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# setup.py runs in this venv too (make compiled, the build tests): its setuptools must
	# read pyproject.toml's SPDX license string, which setuptools < 77 refuses.
	$(BIN)/pip install --quiet --upgrade 'setuptools>=77,<100'
	$(BIN)/pip install --quiet -e '.[dev,bench,quote-server,envoy]'
	touch $(STAMP) $(DEMO_STAMP)

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/phala-router demo $(ARGS)

# The engine suites that run a second time against the compiled hot path (router/native.py).
COMPILED_TESTS := tests/test_fast_engine.py tests/test_fast_findings.py tests/test_fast_framing.py \
	tests/test_fast_rules.py tests/test_fast_timer.py tests/test_conformance.py tests/test_strictness.py \
	tests/test_health_passive.py tests/test_balancing_least_request.py tests/test_native_build.py \
	tests/test_differential_framing.py tests/test_exhaustion.py tests/test_retry_policy.py \
	tests/test_metrics.py tests/test_metrics_operator.py tests/test_access_log.py \
	tests/test_retry_rules.py tests/test_balancing_snapshot.py tests/test_balancing_sticky.py \
	tests/test_router_attestation.py \
	tests/test_request_rules.py

# Rebuild the compiled hot path when a compiled module's source changed since the build
# (the extension files take precedence over the sources in an editable install).
compiled: $(STAMP)
	@if $(BIN)/python -c "import sys, router.native as n; sys.exit(not n.stale_modules())"; \
	then echo "rebuilding the compiled hot path (sources changed)"; \
	$(BIN)/pip install --quiet --no-deps -e .; fi

lint: $(STAMP)
	$(BIN)/ruff check router tests bench setup.py
	$(BIN)/ruff format --check router tests bench setup.py
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format router tests bench setup.py
	$(BIN)/ruff check --fix router tests bench setup.py

# Everything once on the pure-Python twin, then the engine suites on the compiled build
# (when pip could compile it: without a C compiler there is only the pure one), without
# their Envoy cases: Envoy moves the bytes there and no compiled code runs.
test: lint
	PHALA_ROUTER_PURE=1 $(BIN)/phala-router --version
	PHALA_ROUTER_PURE=1 $(BIN)/pytest -q
	@if $(BIN)/python -c "import sys, router.native as n; sys.exit(n.build_kind() == 'pure')"; \
	then $(MAKE) --no-print-directory compiled && $(BIN)/phala-router --version \
	&& $(BIN)/pytest -q -k "not envoy" $(COMPILED_TESTS); \
	else echo "no compiled hot path installed: the pure run above is the only one"; fi

bench: $(STAMP)
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
	find router -name '*.so' -delete
