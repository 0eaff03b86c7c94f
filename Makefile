# OpenRed — the two commands are `make demo` and `make test`; both bootstrap .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# Test files run on two pytest-xdist workers (each file whole on one worker): the suite's
# servers and CLI runs leave the cores idle about half the time on one. TEST_WORKERS=0 runs it
# in one process.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-long bench lint typecheck clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('seccomp') else 1)" \
		|| (command -v apt-get >/dev/null && (apt-get install -y -q libseccomp2 >/dev/null 2>&1 \
		    || (apt-get update -q >/dev/null && apt-get install -y -q libseccomp2 >/dev/null))) \
		|| echo "warning: libseccomp not found; the crypto jail will refuse to start without --no-seccomp"
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.lock
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.lock
	@touch $(BENCH_STAMP)

demo: $(STAMP)
	$(PY) -m openred.demo --out demo-data

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-long: $(STAMP)
	OPENRED_TEST_LONG=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(BENCH_STAMP)
	$(PY) -m bench

lint: $(STAMP)
	$(PY) -m ruff check openred crypto_jail audit_tools tests bench migrations
	$(PY) -m mypy

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
