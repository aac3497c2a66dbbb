"""Shared fixtures. Helpers that tests import (paths, params trees, real repositories, servers,
the browser) are in ``tests/helpers/``."""

from __future__ import annotations

import os
from collections.abc import Callable
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
