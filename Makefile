# Two commands do everything on a fresh machine:
#   make repro   set up .venv (pinned), pull the embedded photos, run the DVC pipeline
#   make test    set up .venv (pinned), lint, run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# Stage commands are `python -m crackdet.stages.*`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test lint ui clean-outputs

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

repro: install
	@test -n "$$(ls data/photos 2>/dev/null)" || dvc pull data.dvc
	dvc repro

test: install
	ruff check .
	pytest

lint: install
	ruff check .
	ruff format --check .

ui: install
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000
