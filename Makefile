# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow peers benchmark clean docs typecheck

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --upgrade -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/fluxhess demo

test: $(VENV)/.installed
	$(PY) -m pytest

test-slow: $(VENV)/.installed
	$(PY) -m pytest --slow

# The peer libraries the converter, parity tests and benchmarks compare against (CPU torch,
# laplace-torch, BackPACK, curvlinops, ASDL, Flax, laplax, folx); without them those tests skip.
peers: $(VENV)/.installed
	PYTHON=$(PY) bash scripts/install-peers.sh

benchmark: $(VENV)/.installed
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist .pytest_cache site

# The documentation site (user guide + API reference from the docstrings) into site/; fails on any warning.
docs: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs]"
	$(VENV)/bin/mkdocs build --strict

# The type check of src/ (settings in pyproject.toml, [tool.mypy]).
typecheck: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[typecheck]"
	$(PY) -m mypy
