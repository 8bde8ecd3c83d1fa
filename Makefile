# Two commands for a fresh machine with Python >= 3.10 (README.md):
#   make demo   create .venv, install unetkit, train on the built-in demo data
#   make test   create .venv, install unetkit with its test extras, run the tests
# Optional, each on its own: make tcmalloc (a faster allocator, through apt-get),
# make gpu-check (on a CUDA machine), make bench, make lint, make test-fast, make clean.
PYTHON     ?= python3
MIN_PYTHON := 3.10
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.unetkit-installed
OUT        ?= runs/demo
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint bench gpu-check tcmalloc check-python clean

# One line, before a virtual environment is made, when this Python cannot make it.
CHECK_PYTHON = command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found: unetkit needs Python >= $(MIN_PYTHON) (make PYTHON=python3.11 ...)"; exit 1; }; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < tuple(map(int, "$(MIN_PYTHON)".split("."))))' || { \
	  echo "error: unetkit needs Python >= $(MIN_PYTHON); $(PYTHON) is $$($(PYTHON) -c 'import platform; print(platform.python_version())') (make PYTHON=python3.11 ...)"; exit 1; }; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "error: $(PYTHON) cannot create a virtual environment: its venv module is missing (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || { $(CHECK_PYTHON); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,export,medical]"
	@touch $(STAMP)

check-python:
	@$(CHECK_PYTHON)

demo: $(STAMP)
	$(BIN)/unetkit train --config configs/demo.yaml --out $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m ruff check src tests models train.py benchmarks hubconf.py
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests models train.py benchmarks hubconf.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The CUDA checks in one go (under 5 minutes on one GPU; says so and stops on a CPU).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu.py

# tcmalloc keeps the large activation buffers that glibc's allocator hands back to the
# kernel after every step: U-Net training ran 1.06-1.93x faster with it here
# (docs/performance.md). unetkit preloads it by itself once it is installed.
tcmalloc:
	@if ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then \
	  echo "tcmalloc is installed; unetkit preloads it (unetkit info shows the allocator)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's libtcmalloc-minimal4 with apt-get"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y libtcmalloc-minimal4; \
	else \
	  echo "no apt-get here: install gperftools' tcmalloc with your package manager" \
	       "(e.g. dnf install gperftools-libs); unetkit works without it, slower"; exit 1; \
	fi

# The environment and caches; runs/ (your results) stays.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
	find . -path ./runs -prune -o -path ./.git -prune -o -type d -name __pycache__ -prune \
	  -exec rm -rf {} +
