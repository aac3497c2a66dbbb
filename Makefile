# Two commands do everything on a fresh machine:
#   make repro   set up .venv (pinned), pull the embedded photos, run the DVC pipeline
#   make test    set up .venv (pinned), lint, import contracts, docs build, the whole test suite
# While working: make test-fast (the tests not marked slow), make lint, make docs.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# Stage commands are `python -m crackdet.stages.*`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test test-fast lint docs ui clean-outputs

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

repro: install
	@test -n "$$(ls data/photos 2>/dev/null)" || dvc pull data.dvc
	dvc repro

test: lint docs
	pytest

test-fast: install
	pytest -m "not slow"

lint: install
	ruff check .
	ruff format --check .
	lint-imports

docs: install
	mkdocs build --strict --quiet

ui: install
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000
