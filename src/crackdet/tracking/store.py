"""Where MLflow's store is, and the guards that let many processes share a SQLite one.

The store lives in ``mlruns/`` at the repository root: ``mlruns/mlflow.db`` (SQLite, MLflow 3's
default backend; the file store is refused) and ``mlruns/artifacts/``. Under ``dvc exp run`` the
root comes from ``DVC_ROOT``, so queued experiments running in temporary executor folders still
log into the one store instead of a throwaway copy. ``MLFLOW_TRACKING_URI`` overrides the store
for users with an ``mlflow server``.

Many processes share the one SQLite file (``dvc queue start -j N``), so the store is guarded
(:func:`guard_sqlite_stores`): the schema is created once under a file lock, the database runs in
WAL mode, and every store call is retried while SQLite reports ``database is locked``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError, first_line

EXPERIMENT_NAME = "crackdet"
STORE_DIR = "mlruns"


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
    # MLflow's store classes: imported only when a SQLite store is about to be opened.
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


def client_for(root: Path) -> Any:
    """An MlflowClient on the project's store (``MLFLOW_TRACKING_URI`` wins, as for the stages)."""
    import mlflow  # ~1.3 s to import: only where the store is used

    mlflow.set_tracking_uri(tracking_uri(root))
    return mlflow.MlflowClient()


def init_store(root: Path) -> str:
    """Point MLflow at the repo store, create the experiment once, return its id."""
    import mlflow  # ~1.3 s to import: only where the store is used

    root = store_root(root)
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
