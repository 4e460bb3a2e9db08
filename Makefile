# Two entry points a fresh machine needs: `make run` and `make test`. Each creates .venv,
# installs the pinned dependencies and generates the gRPC stubs first when they are missing.
PY ?= python3
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
# The CPU torch wheel lies here on our machines; pip.conf usually says so already.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PROTOS := $(wildcard proto/postclf/v1/*.proto)
STUBS := postclf/v1/__init__.py
# The machine's pip.conf names package-index folders that do not all exist, and pip warns once
# per package about each; drop exactly those lines (pip's own exit status still counts).
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory.$$" || true; }

.PHONY: run test test-fast check lint typecheck stubs bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(FIND_LINKS) torch==2.13.0 $(QUIET_PIP)
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[dev,ray]' --config-settings editable_mode=compat $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps crowd-kit==1.4.2 $(QUIET_PIP)  # deps pinned in pyproject.toml (why there)
	touch $@

$(STUBS): $(PROTOS) $(BIN)/.installed
	mkdir -p postclf/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch postclf/__init__.py postclf/v1/__init__.py

stubs: $(STUBS)

run: $(STUBS)
	$(BIN)/python -m server

test: $(STUBS)
	$(BIN)/python -m pytest

# The quick loop while editing: everything except the tests marked slow.
test-fast: $(STUBS)
	$(BIN)/python -m pytest -m "not slow"

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STUBS)
	$(BIN)/mypy model acquisition store batch_jobs server client

check: lint typecheck

clean:
	rm -rf $(VENV) postclf .pytest_cache .mypy_cache .ruff_cache
