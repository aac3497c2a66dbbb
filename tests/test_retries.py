"""The retry loops, on tenacity: the same tries, waits and final errors as the hand-written
loops they replaced (kept here as the reference), on the same scripted failures."""

from __future__ import annotations

import random
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crackdet.core.errors import CrackdetError
from crackdet.tracking import model_log, registry, store

LOCKED = "database is locked"


def script(*outcomes: str) -> Callable[[], str]:
    """A call that raises ``sqlite3.OperationalError(outcome)`` for each outcome but "ok"."""
    queue = list(outcomes)

    def call() -> str:
        outcome = queue.pop(0)
        if outcome == "ok":
            return "done"
        if outcome == "crackdet":
            raise CrackdetError(f"bad input ({LOCKED})")
        raise sqlite3.OperationalError(outcome)

    return call


def outcome_of(call: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """What ``call`` returned or raised, and the waits it slept, with the jitter seeded."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    random.seed(7)
    try:
        result: Any = call()
    except Exception as exc:
        result = (type(exc).__name__, str(exc))
    finally:
        monkeypatch.undo()
    return result, slept


def reference_store_retry(method: Callable[[], Any], seconds: float) -> Any:
    """crackdet.tracking.store's loop before tenacity (storage failures reported alike)."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return method()
        except CrackdetError:
            raise
        except Exception as exc:
            failure = store._storage_failure(exc)
            if failure is not None:
                raise CrackdetError(
                    f"MLflow store: {failure} while writing; free disk space or "
                    "make it writable, then rerun (the store was left unchanged)"
                ) from None
            if not store._is_locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


STORE_CASES = [
    ("ok",),
    (LOCKED, LOCKED, "ok"),
    (*[LOCKED] * 12, "ok"),  # the wait reaches its 2 s cap
    (LOCKED, "no such table: runs"),
    (LOCKED, LOCKED, "database or disk is full"),
    ("disk I/O error",),
    (LOCKED, "crackdet"),
]


@pytest.mark.parametrize("outcomes", STORE_CASES)
def test_store_retry_is_the_hand_written_loop(outcomes, monkeypatch) -> None:
    new = outcome_of(store._retrying(script(*outcomes)), monkeypatch)
    old = outcome_of(
        lambda: reference_store_retry(script(*outcomes), store.LOCK_RETRY_SECONDS), monkeypatch
    )
    assert new == old
    assert len(new[1]) == max(outcomes.index(o) for o in outcomes if o != LOCKED)


def test_store_retry_gives_up_at_its_deadline(monkeypatch) -> None:
    monkeypatch.setattr(store, "LOCK_RETRY_SECONDS", 0.0)
    retried = store._retrying(script(LOCKED, "ok"))
    with pytest.raises(sqlite3.OperationalError, match=LOCKED):
        retried()


def reference_dataset_retry(log: Callable[[], Any], error: type[Exception]) -> Any:
    """crackdet.tracking.model_log's loop before tenacity."""
    for attempt in range(1, model_log.DATASET_TRIES + 1):
        try:
            return log()
        except error as exc:
            if "dataset_pk" not in str(exc) or attempt == model_log.DATASET_TRIES:
                raise
            time.sleep(0.2 * attempt)


@pytest.mark.parametrize(
    "outcomes",
    [("ok",), ("pk", "pk", "ok"), ("pk",) * 5, ("pk", "other", "ok"), ("pk", "value", "ok")],
)
def test_dataset_retry_is_the_hand_written_loop(outcomes, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    def calls() -> Callable[[], str]:
        queue = list(outcomes)

        def log() -> str:
            outcome = queue.pop(0)
            if outcome == "pk":
                raise MlflowException('duplicate key value violates "dataset_pk"')
            if outcome == "other":
                raise MlflowException("INVALID_PARAMETER_VALUE")
            if outcome == "value":
                raise ValueError("dataset_pk, but not from MLflow")
            return "done"

        return log

    new = outcome_of(lambda: model_log.dataset_race_retry(MlflowException)(calls()), monkeypatch)
    old = outcome_of(lambda: reference_dataset_retry(calls(), MlflowException), monkeypatch)
    assert new == old


def test_promotion_lock_waits_half_seconds_for_a_live_owner(tmp_path: Path, monkeypatch) -> None:
    import os

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lock = f"m{registry.LOCK_SUFFIX}"
    client.create_registered_model(
        lock, tags={"crackdet.pid": str(os.getpid()), "crackdet.host": socket.gethostname()}
    )
    real_sleep = time.sleep
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:  # the owner finishes while we wait
            client.delete_registered_model(lock)
        real_sleep(seconds / 50)

    monkeypatch.setattr(time, "sleep", sleep)
    with registry.promotion_lock(client, "m"):
        assert client.get_registered_model(lock).tags["crackdet.pid"] == str(os.getpid())
    assert slept == [0.5, 0.5, 0.5]
    assert not client.search_registered_models(f"name='{lock}'")


def test_promotion_lock_tries_again_at_once_when_the_lock_is_released(
    tmp_path: Path, monkeypatch
) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lock = f"m{registry.LOCK_SUFFIX}"
    dead = {"crackdet.pid": str(2**22 + 12345), "crackdet.host": socket.gethostname()}
    client.create_registered_model(lock, tags=dead)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with registry.promotion_lock(client, "m"):
        pass
    assert slept == [0.0]  # broken, then taken without waiting
