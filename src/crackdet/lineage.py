"""Lineage you can read (``crackdet trace``) and replay (``crackdet reproduce``).

A replay materialises the run's git commit in a temporary git worktree, writes the run's params
into that worktree's ``params.yaml`` (so runs from ``dvc exp run -S …`` replay too), restores the
data through DVC (the worktree shares this repository's DVC cache; ``dvc pull data.dvc`` falls
back to the remote), and reruns the whole pipeline with the commit's own code (``PYTHONPATH`` =
the worktree's ``src``). The replay logs into a throwaway MLflow store inside the worktree
(``<worktree>/mlruns``), so the user's store never sees replay runs or replayed model versions;
the worktree is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crackdet.errors import CrackdetError, first_line
from crackdet.params import flatten

# Figures that measure time, not the model: never compared by a replay.
TIMING_SUFFIXES = ("_s", "_seconds")
# Depends on how warm the feature cache was, not on what was computed.
CACHE_METRICS = ("forward_passes",)


def resolve_run(client: Any, target: str) -> tuple[Any, list[Any]]:
    """A run id, ``models:/name@alias`` or ``models:/name/version`` → (run, its model versions)."""
    from mlflow.exceptions import MlflowException

    run_id = target
    try:
        if target.startswith("models:/"):
            ref = target[len("models:/") :]
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif "/" in ref:
                name, number = ref.split("/", 1)
                version = client.get_model_version(name, number)
            else:
                raise CrackdetError(f"{target}: use models:/NAME@ALIAS or models:/NAME/VERSION")
            if not version.run_id:
                raise CrackdetError(f"{target}: version {version.version} names no MLflow run")
            run_id = version.run_id
        run = client.get_run(run_id)
        versions = client.search_model_versions(f"run_id='{run_id}'")
    except MlflowException as exc:
        raise CrackdetError(
            f"{target}: not found in the MLflow store ({first_line(exc)})"
        ) from None
    return run, sorted(versions, key=lambda v: (v.name, int(v.version)))


def run_params(run: Any) -> dict[str, str]:
    """The params a run ended with: logged params, overridden by ``params.<key>`` tags.

    MLflow params are immutable; a later stage rerun with a changed value records it as a tag
    (crackdet.tracking.log_stage_params), and that tag is the value the run's outputs used.
    """
    params = dict(run.data.params)
    for key, value in run.data.tags.items():
        if key.startswith("params."):
            params[key[len("params.") :]] = value
    return params


def workspace_params(root: Path) -> dict[str, str]:
    try:
        tree = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {k: str(v) for k, v in flatten(tree).items()} if isinstance(tree, dict) else {}


def params_diff(recorded: dict[str, str], current: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, run value, workspace value) for every key that differs; '-' where absent."""
    keys = sorted(set(recorded) | set(current))
    return [
        (k, recorded.get(k, "-"), current.get(k, "-"))
        for k in keys
        if recorded.get(k, "-") != current.get(k, "-")
    ]


def model_locations(client: Any, run: Any, versions: list[Any]) -> list[str]:
    lines = [f"run artifacts: {run.info.artifact_uri}"]
    for version in versions:
        # search_model_versions leaves aliases empty; the registered model has the mapping.
        aliases = client.get_registered_model(version.name).aliases
        where = version.source
        if version.source.startswith("models:/m-"):
            try:
                where = client.get_logged_model(version.source[len("models:/") :]).artifact_location
            except Exception:  # an older server without logged models: keep the models:/ URI
                where = version.source
        names = sorted(a for a, n in aliases.items() if str(n) == str(version.version))
        tag = f" @{',@'.join(names)}" if names else ""
        lines.append(f"models:/{version.name}/{version.version}{tag}: {where}")
    return lines


def trace(client: Any, target: str, root: Path) -> dict[str, Any]:
    """Everything needed to say where a run's figures came from (``crackdet trace``)."""
    run, versions = resolve_run(client, target)
    tags = run.data.tags
    recorded = run_params(run)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "git_commit": tags.get("git.commit", "unknown"),
        "git_dirty": tags.get("git.dirty", "unknown"),
        "dvc_exp_name": tags.get("dvc.dvc_exp_name", "-"),
        "params": recorded,
        "params_diff": params_diff(recorded, workspace_params(root)),
        "data": {k: v for k, v in sorted(tags.items()) if k.startswith("data.")},
        "dvc_lock": {k: v for k, v in sorted(tags.items()) if k.startswith("dvc.") and "/" in k},
        "metrics": dict(sorted(run.data.metrics.items())),
        "model": model_locations(client, run, versions),
        "versions": [f"{v.name}/{v.version}" for v in versions],
    }


def format_trace(info: dict[str, Any]) -> str:
    lines = [
        f"run        {info['run_id']} ({info['run_name']}, {info['status']})",
        f"git        {info['git_commit']} dirty={info['git_dirty']}",
        f"dvc exp    {info['dvc_exp_name']}",
        "data",
        *(f"  {k}: {v}" for k, v in info["data"].items()),
        "dvc.lock",
        *(f"  {k}: {v}" for k, v in info["dvc_lock"].items()),
        f"params     {len(info['params'])} recorded; diff against the workspace params.yaml:",
    ]
    if info["params_diff"]:
        width = max(len(k) for k, _, _ in info["params_diff"])
        lines.append(f"  {'key'.ljust(width)}  run -> workspace")
        lines += [f"  {k.ljust(width)}  {a} -> {b}" for k, a, b in info["params_diff"]]
    else:
        lines.append("  (identical)")
    lines.append("metrics")
    lines += [f"  {k}: {v:g}" for k, v in info["metrics"].items()]
    lines.append("model files")
    lines += [f"  {line}" for line in info["model"]]
    return "\n".join(lines)


# --- replay ----------------------------------------------------------------------------------


@dataclass
class Replay:
    run_id: str
    commit: str
    rows: list[tuple[str, float, float | None]]  # metric, recorded, replayed
    worktree: Path | None

    @property
    def mismatches(self) -> list[tuple[str, float, float | None]]:
        return [row for row in self.rows if row[1] != row[2]]

    def report(self) -> str:
        if not self.mismatches:
            return f"MATCH: {len(self.rows)} metrics identical to run {self.run_id}"
        width = max(len(k) for k, _, _ in self.mismatches)
        lines = [f"MISMATCH: {len(self.mismatches)} of {len(self.rows)} metrics differ"]
        lines.append(f"{'metric'.ljust(width)}  {'recorded':>14}  {'replayed':>14}")
        for key, old, new in self.mismatches:
            shown = "missing" if new is None else f"{new:.10g}"
            lines.append(f"{key.ljust(width)}  {old:>14.10g}  {shown:>14}")
        return "\n".join(lines)


def comparable_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {
        k: v
        for k, v in metrics.items()
        if not k.endswith(TIMING_SUFFIXES) and k not in CACHE_METRICS
    }


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, quiet: bool = True) -> str:
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
    )
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-1:] or ["see output above"]
        raise CrackdetError(f"`{' '.join(args)}` failed in {cwd} ({tail[0]})")
    return result.stdout or ""


def _typed(old: Any, value: str) -> Any:
    """A logged (string) param back in the type its params.yaml key has."""
    if isinstance(old, bool):
        return value == "True"
    if isinstance(old, int):
        return int(value)
    if isinstance(old, float):
        return float(value)
    return value


def restore_params(path: Path, recorded: dict[str, str]) -> list[str]:
    """Write the run's param values into a params.yaml; return the keys that had no slot."""
    tree = yaml.safe_load(path.read_text())
    missing = []
    for dotted, value in recorded.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            missing.append(dotted)
            continue
        node[leaf] = _typed(node[leaf], value)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return missing


def replay_env(worktree: Path) -> dict[str, str]:
    """Stage commands run the commit's code and log into the worktree's throwaway store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(worktree / "src")
    return env


def reproduce(client: Any, run_id: str, root: Path, keep: bool = False) -> Replay:
    """Rerun the pipeline of ``run_id`` at its commit, params and data; compare its metrics."""
    import mlflow

    run, _ = resolve_run(client, run_id)
    commit = run.data.tags.get("git.commit", "none")
    if commit in ("none", "unknown", ""):
        raise CrackdetError(f"run {run_id}: no git.commit tag; it cannot be replayed")
    if run.data.tags.get("git.dirty") == "true":
        print(
            f"reproduce: warning: run {run_id} was made with uncommitted changes; replaying "
            f"commit {commit[:10]} as committed"
        )
    cache = _run(["dvc", "cache", "dir"], root).strip()
    tmp = Path(tempfile.mkdtemp(prefix="crackdet-replay-"))
    worktree = tmp / "worktree"
    try:
        _run(["git", "worktree", "add", "--detach", str(worktree), commit], root)
        missing = restore_params(worktree / "params.yaml", run_params(run))
        if missing:
            print(f"reproduce: params not in that commit's params.yaml, ignored: {missing}")
        env = replay_env(worktree)
        # Share this repo's DVC cache: the data is usually there already, and no remote is needed.
        _run(["dvc", "config", "--local", "cache.dir", cache], worktree, env)
        try:
            _run(["dvc", "checkout", "data.dvc"], worktree, env)
        except CrackdetError:
            _run(["dvc", "pull", "data.dvc"], worktree, env)
        print(f"reproduce: replaying run {run_id} at {commit[:10]} in {worktree}", flush=True)
        # --force --no-run-cache: really rerun every stage instead of restoring cached outputs.
        _run(["dvc", "repro", "--force", "--no-run-cache"], worktree, env, quiet=False)
        replay_client = mlflow.MlflowClient(
            tracking_uri=f"sqlite:///{worktree / 'mlruns' / 'mlflow.db'}"
        )
        replay_id = json.loads((worktree / "outputs/train/run.json").read_text())["run_id"]
        replayed = comparable_metrics(replay_client.get_run(replay_id).data.metrics)
    finally:
        if not keep:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)],
                cwd=root,
                capture_output=True,
            )
            shutil.rmtree(tmp, ignore_errors=True)
    recorded = comparable_metrics(run.data.metrics)
    rows = [(k, recorded[k], replayed.get(k)) for k in sorted(recorded)]
    return Replay(run.info.run_id, commit, rows, worktree if keep else None)
