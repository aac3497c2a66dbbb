"""Shared fixtures: tiny params, a real git+DVC repository in tmp, real data when present."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from crackdet.core.params import Params, parse_params

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
OZGENEL_4K = SHARED_DATA / "ozgenel-4k.zip"
BIN = Path(sys.executable).parent  # the venv running pytest: dvc, crackdet and python live here


def default_params_tree() -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def synthetic_source(per_class: int, style: str = "classic") -> dict[str, Any]:
    return {"kind": "synthetic", "per_class": per_class, "style": style, "licence": "generated"}


def archive_source(path: str, kind: str = "archive", sha256: str = "") -> dict[str, Any]:
    return {
        "kind": kind,
        "path": path,
        "sha256": sha256,
        "licence": "test data",
        "group_by": "signature",
    }


def tiny_params_tree(**overrides: Any) -> dict[str, Any]:
    """The project's params shrunk so a whole pipeline runs in seconds on 2 cores."""
    tree = default_params_tree()
    # One small rendered source: no data to pull, and it runs in seconds.
    tree["fetch"]["sources"] = {"synthetic": synthetic_source(24)}
    tree["train"]["source_weights"] = {}
    tree["train"]["epochs"] = 2
    # scale auto maps a test's 480-px photos at 4-6x (thousands of windows); it has tests of
    # its own (test_maps_eval, the default pipeline), the rest map at 1.
    tree["predict"]["scale"] = 1.0
    for dotted, value in overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return tree


@pytest.fixture
def tiny_params() -> Callable[..., Params]:
    return lambda **overrides: parse_params(tiny_params_tree(**overrides))


def run_cmd(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(
        args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this venv first on PATH, no user MLflow/DVC settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "crackdet-tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@crackdet.invalid"
    env["CRACKDET_OFFLINE"] = "1"
    env.update(extra)
    return env


def make_repo(path: Path, params_tree: dict[str, Any], n_photos: int = 1) -> Path:
    """A real git + DVC repository holding this project's pipeline, tiny params and photos."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml", "requirements.lock"):
        shutil.copy2(PROJECT / name, path / name)
    shutil.copytree(PROJECT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "params.yaml").write_text(yaml.safe_dump(params_tree, sort_keys=False))
    from crackdet.data.sources.synthetic import write_photo_set

    write_photo_set(path / "data" / "photos", n_photos, seed=3, width=480, height=360)
    run_cmd(["git", "init", "-q", "-b", "main"], path)
    run_cmd(["dvc", "init", "-q"], path)
    run_cmd(["dvc", "config", "core.analytics", "false"], path)
    run_cmd(["dvc", "add", "-q", "data"], path)
    run_cmd(["git", "add", "-A"], path)
    run_cmd(["git", "commit", "-q", "-m", "init"], path)
    return path


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(var)
    return tmp_path


def needs_real_sample() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not OZGENEL_4K.exists(), reason=f"real sample not present at {OZGENEL_4K}"
    )


def in_ci() -> bool:
    """``CI`` is set (GitHub Actions, ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(missing: list[str]) -> None:
    """Skip when tools are missing here; fail under CI, where a skip would hide a gap."""
    if not missing:
        return
    message = f"missing: {'; '.join(missing)}"
    if in_ci():
        pytest.fail(f"{message} (.ci/run installs them)", pytrace=False)
    pytest.skip(message)
