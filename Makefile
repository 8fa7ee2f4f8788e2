# Keyward: `make run` for the embedded console, `make test` for the full suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test faults bench loadtest lint install clean

# The pip and setuptools a new venv comes with have published advisories: the
# pinned ones go in first.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt pip setuptools
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	KEYWARD_MODE=embedded $(PY) manage.py runembedded

test:
	scripts/test.sh

# The fault, crash and hostile-input tests at full size (ten kills per task and
# more, twenty times the Hypothesis examples): longer than `make test` allows.
faults:
	KEYWARD_TEST_FAULTS=full HYPOTHESIS_PROFILE=long scripts/test.sh -m faults

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	KEYWARD_MODE=embedded $(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

bench:
	scripts/bench.sh

loadtest:
	scripts/loadtest.sh

clean:
	rm -rf $(VENV) data test-artifacts .pytest_cache .mypy_cache .ruff_cache
