# Two commands set up everything on a fresh clone: `make serve` and `make test`.
# Python 3.11: the local CPU torch wheel this project pins is built for it.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

# Local state (model store, database, job logs) stays inside the checkout by default.
export BENTOML_HOME ?= $(CURDIR)/var/bentoml
export STATE_DIR ?= $(CURDIR)/var
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export BENTOML_DO_NOT_TRACK ?= true

.PHONY: install lint format test serve bench-train clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	@touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

bench-train: install
	$(BIN)/python bench/train_bench.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
