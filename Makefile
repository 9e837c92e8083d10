# One command each: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --constraint constraints.txt

.PHONY: test lint typecheck unit demo bench clean etcd-server

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch goes in first and pinned, so nothing later can pull a CUDA build.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[test]"
	touch $(STAMP)

LINT_DIRS := $(wildcard src tests examples benchmarks)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The etcd rendezvous tests talk to a real server: Debian's etcd-server (3.4), if
# no etcd is on PATH yet (CI is a fresh machine where we are root).
etcd-server:
	@command -v etcd >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server)

unit: $(STAMP) etcd-server
	$(PY) -m pytest src/icelaunch tests

test: lint typecheck unit

demo: $(STAMP)
	$(PY) examples/train_mlp.py

bench: $(STAMP)
	$(PY) benchmarks/launch.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
