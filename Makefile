# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastdiff-installed
# `pip install fastdiff-llm[dev]` pulls the newest triton while CI pins 3.6 (constraints.txt):
# the kernel tests also run under this one, installed beside the venv (ignored by git).
TRITON_NEXT := triton>=3.9,<3.10
TRITON_NEXT_DIR := .triton-next
TRITON_NEXT_STAMP := $(TRITON_NEXT_DIR)/.installed
NEXT_DIR_ABS := $(abspath $(TRITON_NEXT_DIR))
NEXT_PATH := $(NEXT_DIR_ABS)$${PYTHONPATH:+:$$PYTHONPATH}
# pytest-xdist workers: one per core
TEST_WORKERS ?= auto

.PHONY: setup demo test test-fast test-gpu test-triton-next clean

$(STAMP): setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m fastdiff.cli demo --prompt "def fibonacci(n):" --threshold 0.9 --cache dual --show-steps

$(TRITON_NEXT_STAMP): Makefile
	rm -rf $(TRITON_NEXT_DIR)
	$(PY) -m pip install -q --no-deps --target $(TRITON_NEXT_DIR) "$(TRITON_NEXT)" || { \
		echo "ERROR: installing $(TRITON_NEXT) into $(TRITON_NEXT_DIR) failed, so the kernel" \
		     "tests under it cannot run" >&2; exit 1; }
	touch $@

# The Triton kernel tests again, with $(TRITON_NEXT) first on the path.
test-triton-next: $(STAMP) $(TRITON_NEXT_STAMP)
	PYTHONPATH=$(NEXT_PATH) $(PY) -c "import triton, sys; print('kernel tests under triton', \
		triton.__version__, 'from', triton.__file__); \
		sys.exit(0 if triton.__file__.startswith('$(NEXT_DIR_ABS)/') else 'wrong triton')"
	PYTHONPATH=$(NEXT_PATH) $(PY) -m pytest -q -n $(TEST_WORKERS) tests/test_kernel_*.py

test: $(STAMP) test-triton-next
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-gpu: $(STAMP)  # on a CUDA machine: the gpu tests, compiled kernels (make test interprets)
	$(PY) -m pytest -q -m gpu tests

clean:
	rm -rf $(VENV) build *.egg-info $(TRITON_NEXT_DIR)
