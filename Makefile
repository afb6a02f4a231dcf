# `make test` builds its own virtual environment, installs everything, runs the suite and the docs build.
# TORCH names the torch to install first: the CPU build here (fast); e.g. `make test TORCH=torch` elsewhere.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test docs demo lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[examples,docs,dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/mkdocs build --strict --site-dir .site

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .site .pytest_cache
