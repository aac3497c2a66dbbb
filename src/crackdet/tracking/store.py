"""Where MLflow's store is, and the guards that let many processes share a SQLite one.

The store lives in ``mlruns/`` at the repository root: ``mlruns/mlflow.db`` (SQLite, MLflow 3's
default backend; the file store is refused) and ``mlruns/artifacts/``. Under ``dvc exp run`` the
root comes from ``DVC_ROOT``, so queued experiments running in temporary executor folders still
log into the one store instead of a throwaway copy. ``MLFLOW_TRACKING_URI`` overrides the store
for users with an ``mlflow server``.

Many processes share the one SQLite file (``dvc queue start -j N``), so the store is guarded
(:func:`guard_sqlite_stores`): the schema is created once under a file lock, the database runs in
WAL mode, and every store call is retried while SQLite reports ``database is locked``.

Against a tracking server (``MLFLOW_TRACKING_URI=http://…``, docs/team.md) the races are the
server's: a lost ``create_experiment`` race answers ``RESOURCE_ALREADY_EXISTS`` (the winner's
experiment is used), and a server that stops answering becomes one line naming it
(:func:`server_unreachable`) instead of a traceback after minutes of retries.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import logging
import os
import random
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay

from crackdet.core.errors import CrackdetError, first_line

EXPERIMENT_NAME = "crackdet"  # pipeline runs: train creates them, evaluate/predict_samples resume
EVALUATIONS = "crackdet-evaluations"  # `crackdet eval` and `crackdet eval-maps` runs
CAMPAIGNS = "crackdet-campaigns"  # `crackdet predict` campaigns (--ray, S3 photos or outputs)
# What the experiments hold, for MLflow's UI ("Machine learning", not "GenAI apps & agents").
# MLflow 3.17.2's UI picks its landing page by a global toggle instead; docs/team.md says how to
# open the runs page directly.
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
STORE_DIR = "mlruns"

# MLflow draws a tqdm bar for every artifact download (a registry model, a champion re-scored):
# noise in stage logs and CI. Read per download, so this holds for every later call; a user who
# wants the bar sets the variable.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def _retry_worthy(exc: BaseException) -> bool:
    return not isinstance(exc, CrackdetError) and _storage_failure(exc) is None and _is_locked(exc)


def _lock_wait(state: RetryCallState) -> float:
    """0.05 s doubling to 2 s, each jittered to 0.5-1.5 times: waiters do not wake together."""
    return min(0.05 * 2 ** (state.attempt_number - 1), 2.0) * (0.5 + random.random())


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    """Retry ``method`` with jittered backoff while SQLite says it is locked (for up to
    LOCK_RETRY_SECONDS); turn a store that cannot be written into one CrackdetError line.

    MLflow rolls the session back before raising, so repeating the call is safe, and a failed
    write leaves the database as it was (SQLite's journal), never half-written.
    """

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        retrying = Retrying(
            retry=retry_if_exception(_retry_worthy),
            stop=stop_after_delay(LOCK_RETRY_SECONDS),
            wait=_lock_wait,
            reraise=True,
        )
        try:
            return retrying(method, *args, **kwargs)
        except CrackdetError:
            raise
        except Exception as exc:
            failure = _storage_failure(exc)
            if failure is None:
                raise
            db = sqlite_path(str(getattr(args[0], "db_uri", ""))) if args else None
            where = f" {db}" if db else ""
            raise CrackdetError(
                f"MLflow store{where}: {failure} while writing; free disk space or "
                "make it writable, then rerun (the store was left unchanged)"
            ) from None

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


# --------------------------------------------------------------------------------------------
# a tracking server that stops answering: one line, not minutes of retries and a traceback
# --------------------------------------------------------------------------------------------

# What urllib3 says when it gives up (MLflow wraps it: "API request to <url> failed with
# exception HTTPConnectionPool(…): Max retries exceeded with url: … (Caused by …)").
_NO_ANSWER = (
    ("Connection refused", "connection refused"),
    ("Connection reset", "connection reset"),
    ("Connection aborted", "connection dropped"),
    ("RemoteDisconnected", "connection dropped"),
    ("Read timed out", "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT"),
    ("timed out", "connection timed out"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host"),
    ("No route to host", "no route to host"),
    ("Max retries exceeded", "no usable answer"),
)
# The server's scheme and host: never the user and password a URI may carry.
_SERVER_URL = re.compile(r"(https?)://(?:[^@/\s]*@)?([^/\s:'\"?#]+(?::\d+)?)")


def server_unreachable(
    exc: BaseException, doing: str = "", after: str = ""
) -> CrackdetError | None:
    """One line for an MLflow call that found no server (dead, hung, wrong address); None for
    any other error. ``doing``: what was under way (e.g. "logging run 3f2a…"); ``after``: what
    became of it (e.g. "run 3f2a… is left RUNNING …")."""
    text = str(exc)
    if "Max retries exceeded" not in text and "failed with timeout exception" not in text:
        return None
    reason = next((why for words, why in _NO_ANSWER if words in text), "no usable answer")
    # MLflow's message starts with the request's URL; else the configured one.
    found = _SERVER_URL.search(text) or _SERVER_URL.search(
        os.environ.get("MLFLOW_TRACKING_URI", "")
    )
    server = f"{found.group(1)}://{found.group(2)}" if found else "(MLFLOW_TRACKING_URI)"
    during = f" while {doing}" if doing else ""
    outcome = f"; {after}" if after else ""
    return CrackdetError(f"MLflow server {server}: unreachable ({reason}){during}{outcome}{_RERUN}")


# How server_unreachable's line ends: what to do about it.
_RERUN = (
    "; start the server or fix MLFLOW_TRACKING_URI, then rerun "
    "(MLFLOW_HTTP_REQUEST_MAX_RETRIES and _TIMEOUT bound the wait)"
)


def with_outcome(error: CrackdetError, after: str) -> CrackdetError:
    """server_unreachable's line ``error`` with ``after`` (what became of the run) added."""
    text = str(error)
    if _RERUN not in text:
        return error
    return CrackdetError(text.replace(_RERUN, f"; {after}{_RERUN}", 1))


@contextmanager
def server_errors(doing: str = "") -> Iterator[None]:
    """Turn an unreachable tracking server into one CrackdetError line (see above)."""
    try:
        yield
    except CrackdetError:
        raise
    except Exception as exc:
        error = server_unreachable(exc, doing)
        if error is None:
            raise
        raise error from None


# One try, five seconds: for the last word to a server that already stopped answering.
_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@contextmanager
def without_retries() -> Iterator[None]:
    """MLflow calls fail at once instead of retrying (MLflow reads these on every request)."""
    saved = {k: os.environ.get(k) for k in _RETRY_ENV}
    os.environ.update(_RETRY_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client_for(root: Path) -> Any:
    """An MlflowClient on the project's store (``MLFLOW_TRACKING_URI`` wins, as for the stages)."""
    import mlflow  # ~1.3 s to import: only where the store is used

    mlflow.set_tracking_uri(tracking_uri(root))
    return mlflow.MlflowClient()


def init_store(root: Path, name: str = EXPERIMENT_NAME) -> str:
    """Point MLflow at the repo store, create experiment ``name`` once, make it the active one
    and return its id."""
    import mlflow  # ~1.3 s to import: only where the store is used

    root = store_root(root)
    uri = tracking_uri(root)
    location = None
    if uri.startswith("sqlite:///"):
        try:
            (root / STORE_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CrackdetError(
                f"MLflow store {root / STORE_DIR}: cannot create it ({first_line(exc)}); make "
                "the repository writable or set MLFLOW_TRACKING_URI"
            ) from None
        location = (root / STORE_DIR / "artifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    with server_errors(f"opening experiment {name}"):
        experiment_id = _experiment_id(mlflow.MlflowClient(), name, location, sqlite_path(uri))
        # By id: set_experiment(name) activates nothing when it loses a creation race
        # (MLflow 3.17), and the next run would land in another experiment.
        mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _experiment_id(client: Any, name: str, location: str | None, db: Path | None) -> str:
    """The id of experiment ``name``, created (tagged with its kind) if it does not exist."""
    from mlflow.exceptions import MlflowException  # loaded with mlflow by the caller

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # Parallel first runs (a fresh queue) race to create it. On SQLite the store's lock
        # serialises them; a tracking server lets one win and tells the others it exists.
        with store_init_lock(db) if db is not None else contextlib.nullcontext():
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return client.create_experiment(
                        name, artifact_location=location, tags={KIND_TAG: KIND}
                    )
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                experiment = client.get_experiment_by_name(name)
    if KIND_TAG not in experiment.tags:  # created before crackdet tagged its experiments
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
    return experiment.experiment_id
