# The two commands a newcomer needs:  `make up`  (local cluster + operator + example) and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup up down images test lint unit e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

up: setup
	$(BIN)/goodput dev up

down: setup
	$(BIN)/goodput dev down

# The Goodput and CPU engine images as OCI archives, cached by content hash (docs/images.md).
images: setup
	$(BIN)/goodput dev images

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p goodput
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
