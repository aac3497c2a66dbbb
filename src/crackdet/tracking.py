"""MLflow store location, the pipeline run, and lineage tags.

The store lives in ``mlruns/`` at the repository root: ``mlruns/mlflow.db`` (SQLite, MLflow 3's
default backend; the file store is refused) and ``mlruns/artifacts/``. Under ``dvc exp run`` the
root comes from ``DVC_ROOT``, so queued experiments running in temporary executor folders still
log into the one store instead of a throwaway copy. ``MLFLOW_TRACKING_URI`` overrides the store
for users with an ``mlflow server``.

One pipeline execution = one MLflow run: ``train`` creates it and writes its id to a DVC-tracked
file (:data:`RUN_FILE`); ``evaluate`` and ``predict_samples`` resume it from that file.

Many processes share the one SQLite file (``dvc queue start -j N``), so the store is guarded
(:func:`guard_sqlite_stores`): the schema is created once under a file lock, the database runs in
WAL mode, and every store call is retried while SQLite reports ``database is locked``. A run
records the pid and host that own it; a run left RUNNING by a process killed with SIGKILL is
marked KILLED by the next run start on that host (:func:`mark_orphaned_runs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import logging
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from crackdet.errors import CrackdetError, first_line

EXPERIMENT_NAME = "crackdet"
RUN_FILE = Path("outputs/train/run.json")
STORE_DIR = "mlruns"


def repo_root(start: Path | None = None) -> Path:
    """The workspace root: the nearest folder with dvc.yaml (or .dvc/) from the working folder.

    A queued experiment runs in a temporary copy of the repository: that copy is its workspace
    and its outputs go there (DVC collects them from it), never into ``DVC_ROOT``, where
    parallel experiments would overwrite each other's outputs.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


def store_root(root: Path) -> Path:
    """Where ``mlruns/`` lives: ``DVC_ROOT`` under ``dvc exp run`` (the original repository, so
    queued experiments share one store), else the workspace root."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    return root


def tracking_uri(root: Path) -> str:
    """The store URI (``MLFLOW_TRACKING_URI`` wins); SQLite stores get crackdet's guards."""
    default = f"sqlite:///{store_root(root) / STORE_DIR / 'mlflow.db'}"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default
    if uri.startswith("sqlite:"):
        guard_sqlite_stores()
    return uri


# --------------------------------------------------------------------------------------------
# SQLite store guards: one schema initialisation, WAL, retries on "database is locked"
# --------------------------------------------------------------------------------------------

# How long one store call keeps retrying while SQLite is locked (MLflow already waits up to 20 s
# per statement via PRAGMA busy_timeout; a deadlocked read-to-write upgrade fails at once).
LOCK_RETRY_SECONDS = 300.0
INIT_LOCK = ".init.lock"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for ``:memory:`` or other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _is_locked(exc: BaseException) -> bool:
    """SQLite busy, or MLflow's check-then-insert of a shared dataset losing a race to another
    process (the retry finds the row the winner inserted)."""
    text = str(exc).lower()
    return (
        "database is locked" in text
        or "database table is locked" in text
        or "unique constraint failed: datasets." in text
    )


# SQLite's words for a store it cannot write: full disk, read-only file or folder, I/O failure.
_STORAGE_FAILURES = (
    "database or disk is full",
    "attempt to write a readonly database",
    "disk i/o error",
    "unable to open database file",
)


def _storage_failure(exc: BaseException) -> str | None:
    text = str(exc).lower()
    return next((words for words in _STORAGE_FAILURES if words in text), None)


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    """Retry ``method`` with jittered backoff while SQLite says it is locked; turn a store that
    cannot be written into one CrackdetError line.

    MLflow rolls the session back before raising, so repeating the call is safe, and a failed
    write leaves the database as it was (SQLite's journal), never half-written.
    """

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + LOCK_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return method(*args, **kwargs)
            except CrackdetError:
                raise
            except Exception as exc:
                failure = _storage_failure(exc)
                if failure is not None:
                    db = sqlite_path(str(getattr(args[0], "db_uri", ""))) if args else None
                    where = f" {db}" if db else ""
                    raise CrackdetError(
                        f"MLflow store{where}: {failure} while writing; free disk space or "
                        "make it writable, then rerun (the store was left unchanged)"
                    ) from None
                if not _is_locked(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    return call


class _DropRetriedErrors(logging.Filter):
    """MLflow logs every failed session with a traceback; crackdet retries or reports it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SQLAlchemy database error")


@functools.cache
def _guarded_class(base: type) -> type:
    """A subclass of an MLflow SQLAlchemy store whose public methods retry on a locked DB."""
    wrapped = {
        name: _retrying(attr)
        for klass in reversed(base.__mro__)
        for name, attr in vars(klass).items()
        # Plain functions only: static/class methods and properties keep their descriptors.
        if not name.startswith("_") and inspect.isfunction(attr)
    }
    return type(f"Guarded{base.__name__}", (base,), wrapped)


@contextmanager
def store_init_lock(db: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<store>/.init.lock`` (one schema creation, not N racing)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / INIT_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_sqlite(db: Path) -> None:
    """WAL mode (readers never block the writer); persistent, so set once per file."""
    conn = sqlite3.connect(db, timeout=60)
    try:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def _build_guarded(store_cls: type, store_uri: str, *args: Any) -> Any:
    db = sqlite_path(store_uri)
    if db is None:
        return _guarded_class(store_cls)(store_uri, *args)
    try:
        with store_init_lock(db):
            _prepare_sqlite(db)
            # Creating the store creates/migrates the schema when the file is new: under the lock.
            return _retrying(_guarded_class(store_cls))(store_uri, *args)
    except Exception as exc:  # OSError, sqlite3/SQLAlchemy/MLflow errors: all mean the same
        raise CrackdetError(
            f"MLflow store {db}: cannot open or initialise it ({first_line(exc)}); check that "
            f"{db.parent} is writable and the disk has free space"
        ) from None


@functools.cache
def guard_sqlite_stores() -> None:
    """Route MLflow's ``sqlite`` tracking and registry stores through the guarded builders."""
    from mlflow.store.model_registry.sqlalchemy_store import (
        SqlAlchemyStore as RegistrySqlStore,
    )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingSqlStore
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    def tracking_store(store_uri: str, artifact_uri: str | None) -> Any:
        if artifact_uri is None:
            artifact_uri = tracking_utils.DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
        return _build_guarded(TrackingSqlStore, store_uri, artifact_uri)

    def registry_store(store_uri: str, **_: Any) -> Any:
        return _build_guarded(RegistrySqlStore, store_uri)

    logging.getLogger("mlflow.store.db.utils").addFilter(_DropRetriedErrors())
    tracking_utils._tracking_store_registry.register("sqlite", tracking_store)
    registry_utils._get_store_registry().register("sqlite", registry_store)


def init_store(root: Path | None = None) -> str:
    """Point MLflow at the repo store, create the experiment once, return its id."""
    import mlflow

    root = store_root(root or repo_root())
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        try:
            (root / STORE_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CrackdetError(
                f"MLflow store {root / STORE_DIR}: cannot create it ({first_line(exc)}); make "
                "the repository writable or set MLFLOW_TRACKING_URI"
            ) from None
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (root / STORE_DIR / "artifacts").as_uri()
    db = sqlite_path(uri)
    # Parallel first runs (a fresh queue) would race to create the experiment: one wins, the
    # others fail on the unique name. Under the store's lock the losers find it instead.
    with store_init_lock(db) if db is not None else contextlib.nullcontext():
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag (outputs and the MLflow store are git-ignored: only code counts)."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "none", "git.dirty": "unknown"}
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    # dvc.lock changes while the pipeline runs (each stage records its outputs): not "dirty" code.
    changed = [line for line in status.splitlines() if not line.endswith("dvc.lock")]
    return {"git.commit": commit, "git.dirty": str(bool(changed)).lower()}


def dvc_lock_hashes(root: Path, stages: tuple[str, ...]) -> dict[str, str]:
    """``{"dvc.fetch.outputs/fetch": md5, …}`` for the named upstream stages in dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    hashes = {}
    for stage in stages:
        for out in data.get("stages", {}).get(stage, {}).get("outs", []):
            if "md5" in out:
                hashes[f"dvc.{stage}.{out['path']}"] = out["md5"]
    return hashes


def lineage_tags(root: Path, upstream: tuple[str, ...] = ()) -> dict[str, str]:
    tags = git_state(root)
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            tags[f"dvc.{var.lower()}"] = os.environ[var]
    tags.update(dvc_lock_hashes(root, upstream))
    return tags


# --------------------------------------------------------------------------------------------
# run ownership: a SIGKILLed process cannot end its run, so the next run start does it
# --------------------------------------------------------------------------------------------

PID_TAG = "crackdet.pid"
HOST_TAG = "crackdet.host"
START_TAG = "crackdet.pid_start"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from its closing paren.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns the active run (checked by mark_orphaned_runs)."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: _process_start(pid) or ""}


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    current = _process_start(pid)
    return not (start and current is not None and current != start)


def mark_orphaned_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of this host whose owning process is gone; return ids."""
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    killed = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid, tags.get(START_TAG, "")):
            continue
        client.set_tag(run.info.run_id, "crackdet.killed_reason", f"owner pid {pid} vanished")
        client.set_terminated(run.info.run_id, status="KILLED")
        killed.append(run.info.run_id)
    return killed


# --------------------------------------------------------------------------------------------
# nothing from the author's machine in what is logged: no absolute paths, no credentials
# --------------------------------------------------------------------------------------------

_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"([?&](?:token|access_token|key|api_key|apikey|secret|password|sig|signature|"
    r"x-amz-signature|x-amz-credential)=)[^&#\s]*",
    re.IGNORECASE,
)


def redact(value: Any, root: Path) -> Any:
    """A value safe to log: paths under the repo become relative, under the home ``~/…``, and
    credentials in URLs (``user:token@``, ``?token=``) are masked. Non-strings pass through.

    Relative and ``~`` paths still resolve the same way for crackdet (``fetch.archive`` is read
    relative to the repo root, with ``~`` expanded), so a replayed run finds the same input.
    """
    if not isinstance(value, str) or not value:
        return value
    text = _SECRET_QUERY.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", value))
    if text.startswith("/"):
        path = Path(text)
        home = Path.home()
        for base, shown in ((root.resolve(), None), (home, "~")):
            try:
                rel = path.relative_to(base)
            except ValueError:
                continue
            return rel.as_posix() if shown is None else f"{shown}/{rel.as_posix()}"
    return text


def source_name(root: Path) -> str:
    """The entry script for the ``mlflow.source.name`` tag, without the machine's folders.

    MLflow tags the absolute path; ``src/crackdet/stages/train.py`` (or a repo-relative path)
    names the same code, which ``git.commit`` pins.
    """
    path = Path(sys.argv[0]).resolve()
    parts = path.parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "crackdet" and parts[i - 1] == "src":
            return Path(*parts[i - 1 :]).as_posix()
    shown = redact(str(path), root)
    return shown if not shown.startswith("/") else path.name


def safe_params(flat: dict[str, Any], root: Path) -> dict[str, Any]:
    """:func:`redact` applied to every value of a flattened params dict."""
    return {key: redact(value, root) for key, value in flat.items()}


def start_pipeline_run(root: Path, run_name: str | None = None) -> Any:
    """Create the run that train, evaluate and predict_samples of this execution share."""
    import mlflow

    experiment_id = init_store(root)
    for run_id in mark_orphaned_runs(mlflow.MlflowClient(), experiment_id):
        print(f"MLflow run {run_id} was left RUNNING by a killed process: marked KILLED")
    name = run_name or os.environ.get("DVC_EXP_NAME") or None
    tags = {"crackdet.stage": "pipeline", **owner_tags()}
    tags["mlflow.source.name"] = source_name(root)
    return mlflow.start_run(run_name=name, tags=tags)


@contextmanager
def resume_pipeline_run(root: Path) -> Iterator[Any]:
    """Reopen the run named in :data:`RUN_FILE` (written by train)."""
    import mlflow

    path = root / RUN_FILE
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        raise CrackdetError(
            f"{RUN_FILE}: missing or unreadable; run the train stage first"
        ) from None
    init_store(root)
    try:
        # Take ownership before the run turns RUNNING again, so no sweep sees a dead owner.
        client = mlflow.MlflowClient()
        for key, value in owner_tags().items():
            client.set_tag(run_id, key, value)
        run = mlflow.start_run(run_id=run_id)
    except Exception as exc:  # MLflow raises its own types for a run it doesn't know
        raise CrackdetError(
            f"{RUN_FILE}: run {run_id} is not in the MLflow store {tracking_uri(root)} "
            f"({first_line(exc)}); rerun train (dvc repro --force train)"
        ) from None
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def log_stage_params(section: str, values: dict[str, Any]) -> None:
    """Log a later stage's params section into the resumed run.

    MLflow params are immutable. When evaluate or predict_samples reruns alone with changed
    params, the value train logged stays and the new one is recorded as tag ``params.<key>``.
    """
    import mlflow

    from crackdet.params import flatten

    active = mlflow.active_run()
    assert active is not None, "log_stage_params needs an active run"
    logged = mlflow.get_run(active.info.run_id).data.params
    fresh = {}
    root = repo_root()
    for key, value in flatten({section: values}).items():
        value = redact(value, root)
        if key not in logged:
            fresh[key] = value
        elif logged[key] != str(value):
            mlflow.set_tag(f"params.{key}", str(value))
    if fresh:
        mlflow.log_params(fresh)
