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

.PHONY: install lint format test serve bench-train clean deploy-tools postgres image-tools promtool check-deploy

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

test: lint deploy-tools
	$(BIN)/python -m pytest

# --- deployment checks (tests/deploy) -----------------------------------------------
# Tools pip cannot put in .venv: checkov, whose pins conflict with the project's
# (packaging, networkx, python-dateutil), gets its own virtualenv inside .venv (so git
# and ruff ignore it); so does Label Studio (Django and its pins, ~1 GB), whose real
# server the Label Studio end-to-end test starts (tests/label_studio.py); the
# PostgreSQL server comes from Debian, and the tests start a throwaway one
# (tests/pg.py). Without root or apt-get, the PostgreSQL tests skip.
CHECKOV_VERSION ?= 3.3.30
TOOLS := $(VENV)/tools
export CHECKOV ?= $(abspath $(TOOLS))/bin/checkov

$(TOOLS)/.checkov-$(CHECKOV_VERSION): | $(BIN)/.installed
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	@touch $@

LABEL_STUDIO_VERSION ?= 1.23.2
LABEL_STUDIO_VENV := $(TOOLS)/label-studio
export LABEL_STUDIO ?= $(abspath $(LABEL_STUDIO_VENV))/bin/label-studio

$(LABEL_STUDIO_VENV)/.label-studio-$(LABEL_STUDIO_VERSION): | $(BIN)/.installed
	@test -x $(LABEL_STUDIO_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install --quiet 'label-studio==$(LABEL_STUDIO_VERSION)'
	@touch $@

postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	else \
		echo "PostgreSQL server not found and not installable here (needs root and apt-get):"; \
		echo "the PostgreSQL variants of the store and retrain tests will be skipped."; \
	fi

# buildah builds and runs the images without a Docker engine, debootstrap makes their
# base (tests/deploy/test_image.py); both from Debian, both need root, like PostgreSQL.
image-tools:
	@if command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap; \
	else \
		echo "buildah and debootstrap not found and not installable here (needs root and apt-get):"; \
		echo "the image build and run tests will be skipped."; \
	fi

# promtool (Prometheus' rule checker and rule unit tester) checks the monitoring
# component's alerts (tests/deploy/test_monitoring.py). Only that one binary is taken
# from Debian's prometheus package, into .venv/tools/bin: installing the package would
# add a Prometheus server, started at boot under systemd. apt-get download needs no
# root; without apt-get, put any promtool on PATH (or name it in $PROMTOOL).
promtool:
	@if [ -x $(TOOLS)/bin/promtool ] || command -v promtool >/dev/null 2>&1; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq; fi; \
		tmp=$$(mktemp -d) && \
		(cd $$tmp && apt-get download -qq prometheus) && \
		dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/root && \
		mkdir -p $(TOOLS)/bin && install -m 0755 $$tmp/root/usr/bin/promtool $(TOOLS)/bin/promtool; \
		status=$$?; rm -rf $$tmp; \
		[ $$status = 0 ] || echo "promtool could not be fetched: the monitoring rule tests will fail."; \
	else \
		echo "promtool not found and not installable here (no apt-get): put Prometheus' promtool"; \
		echo "on PATH or in \$$PROMTOOL, or the monitoring rule tests will fail."; \
	fi

deploy-tools: $(TOOLS)/.checkov-$(CHECKOV_VERSION) \
	$(LABEL_STUDIO_VENV)/.label-studio-$(LABEL_STUDIO_VERSION) postgres image-tools promtool

# The deployment checks alone (manifests, Bento, Dockerfile and its images, checkov,
# monitoring rules and dashboard, PostgreSQL harness);
# `make test` runs them too, as part of the one pytest run.
check-deploy: install deploy-tools
	$(BIN)/python -m pytest tests/deploy

# First run: trains a quick first model if the store has none (under two minutes) and
# queues the full one for the service to train in the background; then serves
# on HOST:PORT (default 127.0.0.1:3000); every setting is an environment variable.
serve: install
	$(BIN)/python -m retrain bootstrap
	$(BIN)/bentoml serve service.service:TextClassifier

bench-train: install
	$(BIN)/python bench/train_bench.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
