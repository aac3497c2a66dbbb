"""MLflow store location, the pipeline run, and lineage tags.

The store lives in ``mlruns/`` at the repository root: ``mlruns/mlflow.db`` (SQLite, MLflow 3's
default backend; the file store is refused) and ``mlruns/artifacts/``. Under ``dvc exp run`` the
root comes from ``DVC_ROOT``, so queued experiments running in temporary executor folders still
log into the one store instead of a throwaway copy. ``MLFLOW_TRACKING_URI`` overrides the store
for users with an ``mlflow server``.

One pipeline execution = one MLflow run: ``train`` creates it and writes its id to a DVC-tracked
file (:data:`RUN_FILE`); ``evaluate`` and ``predict_samples`` resume it from that file.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from crackdet.errors import CrackdetError, first_line

EXPERIMENT_NAME = "crackdet"
RUN_FILE = Path("outputs/train/run.json")
STORE_DIR = "mlruns"


def repo_root(start: Path | None = None) -> Path:
    """The repository root: ``DVC_ROOT`` when DVC set it, else the nearest folder with dvc.yaml."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(root: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{root / STORE_DIR / 'mlflow.db'}"


def init_store(root: Path | None = None) -> str:
    """Point MLflow at the repo store, create the experiment once, return its id."""
    import mlflow

    root = root or repo_root()
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        (root / STORE_DIR).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (root / STORE_DIR / "artifacts").as_uri()
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


def start_pipeline_run(root: Path, run_name: str | None = None) -> Any:
    """Create the run that train, evaluate and predict_samples of this execution share."""
    import mlflow

    init_store(root)
    name = run_name or os.environ.get("DVC_EXP_NAME") or None
    return mlflow.start_run(run_name=name, tags={"crackdet.stage": "pipeline"})


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
    for key, value in flatten({section: values}).items():
        if key not in logged:
            fresh[key] = value
        elif logged[key] != str(value):
            mlflow.set_tag(f"params.{key}", str(value))
    if fresh:
        mlflow.log_params(fresh)
