# The two set-up commands of the README: `make run` (the tiny recipe on shipped data) and
# `make test` (the test suite). Each creates/reuses .venv and installs the pinned package first:
# `run` the package alone, `test` with its test and reference extras (pytest, notebooks, torch +
# transformers), which take most of the install time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.installed-run-stamp
WORKDIR ?= runs/tiny
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench clean chromium

# $(call venv_install,<pip target>): create the venv if missing, install, touch the stamp ($@).
define venv_install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e $(1)
	touch $@
endef

# A variable, because a literal comma would split $(call)'s arguments.
FULL_INSTALL := '.[test,hf]'

$(STAMP): setup.py
	$(call venv_install,$(FULL_INSTALL))

$(RUN_STAMP): setup.py
	$(call venv_install,.)

install: $(STAMP)

run: $(RUN_STAMP)
	$(PY) -m gpt_jax.main --config=experiments/configs/recipe_tiny.py --workdir=$(WORKDIR)

# Two pytest workers (pytest-xdist), a test file each at a time: most tests are bound by XLA's
# single-threaded compilation, so two files in parallel use the 2 cores better than one.
TEST_WORKERS ?= 2

# The web chat's browser tests drive Debian's chromium (Playwright's own browser download does
# not work offline); installed with apt when missing (sudo when not root).
CHROMIUM_PKG := chromium
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(CHROMIUM_PKG); }

test: $(STAMP) chromium
	$(PY) -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

test-fast: $(STAMP) chromium
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
