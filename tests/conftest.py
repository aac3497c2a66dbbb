"""Shared fixtures. Helpers that tests import (paths, params trees, real repositories, servers,
the browser) are in ``tests/helpers/``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crackdet.core.params import Params, parse_params
from tests.helpers.params import tiny_params_tree


@pytest.fixture
def tiny_params() -> Callable[..., Params]:
    return lambda **overrides: parse_params(tiny_params_tree(**overrides))


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(var)
    return tmp_path


@pytest.fixture(autouse=True)
def tracking_uri_restored() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in this process's
    environment, so a test that points MLflow at its server would send every later test of the
    same worker there (and find it gone). Each test ends with the URI it started with."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") == before:
        return
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(before)  # None unsets MLflow's own and the variable
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
