# One command each: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --constraint constraints.txt

.PHONY: test quick lint typecheck unit demo bench compat clean etcd-server

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

# Every test, quickest tier first: unit (no process), launch (workers from the test
# process), system (fresh interpreters, several nodes, etcd, notebooks). The 15
# slowest are listed at the end.
unit: $(STAMP) etcd-server
	$(PY) -m pytest src/icelaunch tests/unit tests/launch tests/system

test: lint typecheck unit

# The unit tier and the doctests: no worker process, seconds; stops at the first failure.
quick: $(STAMP)
	$(PY) -m pytest -x --durations=5 src/icelaunch tests/unit

demo: $(STAMP)
	$(PY) examples/train_mlp.py

bench: $(STAMP)
	$(PY) benchmarks/launch.py

# The suite against another torch release, in a throwaway venv (a 5-7 GB CUDA build
# from the registry; never part of `make test`): make compat TORCH=2.15.0
# [COMPAT_TESTS="tests/unit tests/launch"]
TORCH ?=
COMPAT_TESTS ?= src/icelaunch tests
COMPAT_VENV := /tmp/icelaunch-compat-$(TORCH)
compat: etcd-server
	@test -n "$(TORCH)" || (echo "usage: make compat TORCH=X.Y.Z" >&2; exit 2)
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	sed 's/^torch==.*/torch==$(TORCH)/' constraints.txt > $(COMPAT_VENV)/constraints.txt
	$(COMPAT_VENV)/bin/python -m pip install -q -c $(COMPAT_VENV)/constraints.txt "torch==$(TORCH)"
	$(COMPAT_VENV)/bin/python -m pip install -q -c $(COMPAT_VENV)/constraints.txt -e ".[test]"
	cd $(COMPAT_VENV) && $(COMPAT_VENV)/bin/python -c "import torch, icelaunch; print('torch', torch.__version__, icelaunch.__file__)"
	$(COMPAT_VENV)/bin/python -m pytest -p no:cacheprovider --rootdir=$(CURDIR) -c $(CURDIR)/pyproject.toml $(COMPAT_TESTS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
