# Two commands matter on a fresh machine: `make demo` and `make test`. Both build the venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# editable_mode=compat: a plain path entry, no import hook to run at every start-up; setuptools
# calls the mode transitional and says so in a banner, silenced with PYTHONWARNINGS
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: install
	$(BIN)/downloader demo

lint: install
	$(BIN)/flake8

test: lint
	$(BIN)/python -m pytest

bench: install
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[bench,plot]' --config-settings editable_mode=compat
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo-out .bench .pytest_cache .hypothesis build *.egg-info
