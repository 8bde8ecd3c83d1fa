# Two commands for a fresh machine with Python >= 3.10:
#   make demo   create .venv, install unetkit, train on the built-in demo data
#   make test   create .venv, install unetkit with its test extras, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.unetkit-installed
OUT    ?= runs/demo

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@# tcmalloc makes training 1.06-1.93x faster (see README, Performance); best effort:
	@# installed only where we are root with apt-get, and unetkit works without it.
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	   && ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then \
	   (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null 2>&1 \
	   || echo "note: could not install libtcmalloc-minimal4; continuing without it"; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,export,medical]"
	@touch $(STAMP)

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

clean:
	rm -rf $(VENV) runs
