# Two commands do everything on a fresh machine:
#   make repro   set up .venv (pinned), pull the embedded data (real sample, photos), run the DVC pipeline
#   make test    set up .venv (pinned), lint, import contracts, docs build, the whole test suite
# While working: make test-fast (the tests not marked slow), make lint, make docs.
# make test-team: the team set-up's tests alone (PostgreSQL + S3 + mlflow server, docs/team.md);
# make screenshots: regenerate the screenshots in docs/ (scripts/screenshots.py).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# The suite on both cores, a test file per worker (module fixtures such as a tracking server are
# started once); WORKERS=0 runs it in this process.
WORKERS ?= 2
PYTEST := pytest -n $(WORKERS) --dist loadfile
# Stage commands are `python -m crackdet.stages.*`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test test-fast test-team lint docs ui screenshots clean-outputs

# Two stamps: the pipeline needs the package alone (make repro installs only that); the tests,
# linters, docs and team tools come on top of it.
$(RUN_STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,team,ray]'
	touch $(STAMP)

install: $(STAMP)

repro: $(RUN_STAMP)
	@test -n "$$(ls data/photos 2>/dev/null)" -a -n "$$(ls data/sources 2>/dev/null)" || dvc pull data.dvc
	dvc repro

test: lint docs
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

test-team: install
	$(PYTEST) -m team

lint: install
	ruff check .
	ruff format --check .
	lint-imports

docs: install
	mkdocs build --strict --quiet

# MLflow 3.17's UI opens an experiment on its GenAI overview unless the URL asks for the
# "Model training" view: print those URLs first (docs/team.md).
ui: install
	@python -c "$$UI_URLS" 2>/dev/null || true
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000

define UI_URLS
import sqlite3
db = sqlite3.connect("file:mlruns/mlflow.db?mode=ro", uri=True)
for name, id in db.execute("select name, experiment_id from experiments where name like 'crackdet%'"):
    print(f"{name}: http://127.0.0.1:5000/#/experiments/{id}?workflowType=machine_learning")
endef
export UI_URLS

screenshots: install
	python scripts/screenshots.py --out docs
