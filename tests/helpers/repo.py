"""Real tools in subprocesses: an environment with this venv first and no user MLflow/DVC
settings, a command runner that fails with the tool's output, and a real git + DVC repository
holding this project's pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.project import BIN, PROJECT


def run_cmd(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(
        args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """End a server a test started: SIGTERM, then SIGKILL if it has not gone after ``grace``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
