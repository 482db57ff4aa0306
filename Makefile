# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint bench profile reproduce app clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-app

$(VENV)/.installed-app: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[app]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m iamnn.data ensure-fashion-mnist
	$(BIN)/iamnn demo

# one test process per core (pytest-xdist); each uses one thread (tests/conftest.py)
test: $(VENV)/.installed-dev
	$(BIN)/pytest -n auto

test-slow: $(VENV)/.installed-dev
	$(BIN)/pytest -m slow

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# the shipped model's README row, re-evaluated on the 10 000 Fashion-MNIST test images (about 10 s)
reproduce: $(VENV)/.installed
	$(BIN)/python -m iamnn.data ensure-fashion-mnist
	$(BIN)/iamnn evaluate --pretrained

# the interactive explorer of the shipped model on http://127.0.0.1:7860 (Ctrl-C stops it)
app: $(VENV)/.installed-app
	$(BIN)/iamnn app --pretrained

profile: $(VENV)/.installed
	$(BIN)/iamnn profile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
