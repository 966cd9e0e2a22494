# lockbuild — `make demo` and `make test` work on a fresh Debian 12 machine (as root or with sudo).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export LOCKBUILD_CACHE ?= $(HOME)/.cache/lockbuild

.PHONY: venv deps demo test test-fast lint bench repro wheel install-tool constraints clean

# constraints.txt is lockbuild's own lock: every dependency (and test tool) pinned; `make constraints`
# re-resolves it. The venv, `make install-tool` and the README's install lines all use it.
$(BIN)/lockbuild: pyproject.toml constraints.txt
	PY=$(PY) bash scripts/install-deps.sh venv
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip -c constraints.txt uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --constraint constraints.txt -e '.[test]'
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

wheel: venv  ## dist/lockbuild-<version>-py3-none-any.whl
	$(BIN)/uv build --wheel -o dist .

install-tool: venv  ## `lockbuild` on PATH (uv's tool bin dir, ~/.local/bin) in its own venv, dependencies pinned
	$(BIN)/uv tool install --force --constraint constraints.txt .
	@bin=$$($(BIN)/uv tool dir --bin); case ":$$PATH:" in *":$$bin:"*) echo "lockbuild: $$bin/lockbuild";; \
	  *) echo "lockbuild: $$bin/lockbuild ($$bin is not on PATH: run '$(BIN)/uv tool update-shell' and open a new shell)";; esac

constraints:  ## re-resolve lockbuild's own dependency pins
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 -o constraints.txt --quiet

bench: venv deps
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out build dist *.egg-info
