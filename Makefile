# The two commands of the README, each setting up what it needs on first use (a .venv in the repo).
#   make demo [ARGS="--workdir=/tmp/stts_jax_demo --base_steps=400 --steps=60"]
#   make test [ARGS="-m slow"]
PYTHON ?= python3
VENV := .venv
LINTED := stts_jax tests configs launch notebooks

$(VENV)/.demo: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.demo
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

.PHONY: demo test
demo: $(VENV)/.demo
	$(VENV)/bin/python -m stts_jax.demo $(ARGS)

test: $(VENV)/.test
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/python -m pytest -q $(ARGS)
