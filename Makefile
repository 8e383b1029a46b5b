# The two set-up commands of the README: `make run` (the tiny recipe on shipped data) and
# `make test` (the test suite). Each creates/reuses .venv and installs the pinned package first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/tiny
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,hf]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m gpt_jax.main --config=experiments/configs/recipe_tiny.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
