# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned (2.13.0, the CPU wheel): an unpinned torch pulls CUDA packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH := torch==2.13.0

.PHONY: demo test install install-test bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install $(TORCH) -e ".[test]"
	touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test

demo: $(VENV)/.base
	$(VENV)/bin/quickstudy demo

test: $(VENV)/.test
	$(PY) -m pytest

bench: $(VENV)/.test
	$(PY) bench/sampler.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
