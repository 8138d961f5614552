# The two commands: `make test` and `make demo` (plus `make bench`). Each works on a fresh machine: it
# creates .venv, installs the project (the production distribution, pyproject.toml, and the dev tools'
# distribution with the test tools, packaging/devtools/pyproject.toml: decision 0104), installs missing
# Debian packages (as root, with apt-get), then runs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint typecheck pytest deps venv clean interop-deps mutation fuzz nightly deb

venv: $(STAMP)

DEVTOOLS := packaging/devtools

# Two installs, production first: a venv made before the split had the dev console scripts in the
# production distribution, and upgrading it must not remove them after the dev tools installed theirs.
$(STAMP): pyproject.toml $(DEVTOOLS)/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m pip install -q -e './$(DEVTOOLS)[test]'
	touch $(STAMP)

deps:
	scripts/ensure-debs.sh

# npm peers for interop tests (the Phoenix JavaScript client), pinned by package-lock.json.
INTEROP := tests/interop
$(INTEROP)/node_modules/.installed: $(INTEROP)/package.json $(INTEROP)/package-lock.json
	cd $(INTEROP) && npm ci --no-audit --no-fund
	touch $@

interop-deps: deps $(INTEROP)/node_modules/.installed

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# Two sessions (tests/scheduling.py, docs/testing.md): everything but the `serial` modules on PYTEST_WORKERS
# cores (pytest-xdist), then the `serial` ones (full-rate floods with thresholds) alone. The drop-reason
# coverage check (tests/drop_coverage.py) adds up both through DROPS and runs after the second when the
# whole suite ran (no PYTEST_ARGS). A session that selects nothing (exit 5) is not a failure.
PYTEST_WORKERS ?= 2
DROPS := .pytest-drop-reasons
pytest: venv deps interop-deps
	rm -f $(DROPS)
	FZ_DROP_REASONS_FILE=$(DROPS) $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not serial" \
		$(PYTEST_ARGS) || test $$? -eq 5
	FZ_DROP_REASONS_FILE=$(DROPS) $(if $(PYTEST_ARGS),,FZ_DROP_COVERAGE_CHECK=1) $(BIN)/pytest -q -m serial \
		$(PYTEST_ARGS) || test $$? -eq 5
	rm -f $(DROPS)

test: venv deps lint typecheck pytest

# The nightly run: the stateful test's nightly profile (FZ_STATEFUL_EXAMPLES random examples in shards) and
# the full-size soak (1,000 clients, 6 simulated hours), fanned out over the cores. Not part of `make test`.
nightly: venv deps
	FZ_STATEFUL_PROFILE=nightly nice $(BIN)/pytest -q -n $(PYTEST_WORKERS) tests/sim/test_stateful.py \
		tests/sim/test_soak.py -k "reference_model or memory_stays_flat"

# The simulated demo first, then the real one in network namespaces (needs root: without it the real
# part says so and exits non-zero).
demo: venv deps
	$(BIN)/firezone-sim demo
	$(BIN)/firezone-e2e demo

bench: venv deps
	$(BIN)/python -m bench

# Mutation check (scripts/mutation.py, docs/testing.md "Mutation check", decision 0124): gateway_core/policy
# against the stateful test alone, gateway_core/wire and gateway_core/dns against the unit and contract
# tests; both cores; not part of `make test`. The run stops starting mutants after 1740 s (29 min), shared
# 3:2 by the groups (measured: 22 min 51 s for every mutant at load ~3).
mutation: venv deps
	$(BIN)/python scripts/mutation.py --children 2 --budget 1740

# Coverage-guided fuzzing (fuzz/, atheris): every target for FUZZ_SECONDS each, FUZZ_JOBS at a time (nice'd),
# new inputs kept in .fuzz/corpus, crashes in .fuzz/crashes; exits non-zero if a target failed. Not part of
# `make test` (which runs every target briefly: tests/fuzz/test_fuzz.py). FUZZ_TARGETS='ip dns' for some.
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= 1
FUZZ_TARGETS ?=
fuzz: venv
	$(BIN)/python -m fuzz all --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) --nice $(FUZZ_TARGETS)

# The Debian package (dist/firezone-gateway-py_<version>_<arch>.deb): the daemon in its own environment
# under /usr/lib/firezone-gateway, the unit, sysusers and tmpfiles (scripts/build-deb.sh, docs/operations.md).
deb: venv deps
	scripts/build-deb.sh dist

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis .fuzz dist $(DROPS)
