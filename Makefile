# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-wheel lint bench profile reproduce app docs clean

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

# the wheel, installed into a fresh venv with its dependencies from the package index (PyTorch and its
# CUDA libraries: 5.7 GB in a temporary folder, removed after), then run from outside the checkout
test-wheel: $(VENV)/.installed-dev
	$(BIN)/pytest -m slow tests/test_wheel.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# the shipped model's README row, re-evaluated on the 10 000 Fashion-MNIST test images (about 10 s)
reproduce: $(VENV)/.installed
	$(BIN)/python -m iamnn.data ensure-fashion-mnist
	$(BIN)/iamnn evaluate --pretrained

# the interactive explorer of the shipped model on http://127.0.0.1:7860 (Ctrl-C stops it)
app: $(VENV)/.installed-app
	$(BIN)/iamnn app --pretrained

# the documentation site in site/ (open site/index.html); warnings are errors, as in the tests
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict

profile: $(VENV)/.installed
	$(BIN)/iamnn profile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
