# lockbuild — `make demo` and `make test` work on a fresh Debian 12 machine (as root or with sudo).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export LOCKBUILD_CACHE ?= $(HOME)/.cache/lockbuild

.PHONY: venv deps demo test test-fast lint bench repro clean

$(BIN)/lockbuild: pyproject.toml
	PY=$(PY) bash scripts/install-deps.sh venv
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	$(BIN)/python -m compileall -q lockbuild  # fast start even where PYTHONDONTWRITEBYTECODE is set
	touch $@

venv: $(BIN)/lockbuild

deps:  ## system tools the tests use: dockerd, registry, skopeo, umoci
	bash scripts/install-deps.sh

lint: venv
	$(BIN)/ruff check lockbuild tests $(wildcard benchmarks)
	$(BIN)/mypy lockbuild

test: venv deps lint
	bash scripts/run-tests.sh

test-fast: venv
	$(BIN)/pytest -q -m "not slow and not docker"

demo: venv deps
	bash scripts/demo.sh

repro: venv deps  ## same lock: root here, non-root here, non-root in a debootstrapped trixie root -> one digest
	bash scripts/repro.sh

bench: venv deps
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out build *.egg-info
