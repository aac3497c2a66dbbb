"""Replay (``crackdet reproduce``): rerun a run's pipeline at its commit, params and data, and
compare every recorded metric.

A replay materialises the run's git commit in a temporary git worktree, writes the run's params
into that worktree's ``params.yaml`` (so runs from ``dvc exp run -S …`` replay too), restores the
data through DVC (the worktree shares this repository's DVC cache; ``dvc pull data.dvc`` falls
back to the remote), and reruns the whole pipeline with the commit's own code (``PYTHONPATH`` =
the worktree's ``src``). The replay logs into a throwaway MLflow store inside the worktree
(``<worktree>/mlruns``), so the user's store never sees replay runs or replayed model versions;
the worktree is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crackdet.core.errors import CrackdetError
from crackdet.core.io import sha256_file
from crackdet.core.layout import Layout
from crackdet.data.records import FetchSummary
from crackdet.data.sources import KINDS
from crackdet.tracking.lineage import resolve_run, run_params
from crackdet.tracking.metric_names import is_timing
from crackdet.tracking.store import EXPERIMENT_NAME

# How far a replayed figure may be from the recorded one and still MATCH. Same machine: every
# figure is identical. Another x86 CPU (AVX2 vs AVX-512): ONNX Runtime picks its kernels by the
# CPU, so features, weights and losses move in the 6th-7th digit and a rank figure such as a ROC
# AUC by one pair of images (~1e-4 on the test split); a test image that flips class moves an
# accuracy by 1/n (> 1e-3): that is a MISMATCH. docs/guarantees.md says what holds where.
TOLERANCE = 1e-3


@dataclass
class Replay:
    run_id: str
    commit: str
    rows: list[tuple[str, float, float | None]]  # metric, recorded, replayed
    worktree: Path | None
    tolerance: float = TOLERANCE

    @property
    def differing(self) -> list[tuple[str, float, float | None]]:
        """Rows not exactly equal (NaN equals NaN: a figure undefined both times)."""
        return [row for row in self.rows if not _same(row[1], row[2])]

    @property
    def mismatches(self) -> list[tuple[str, float, float | None]]:
        """Rows beyond the tolerance, or missing from the replay."""
        return [row for row in self.differing if _difference(row) > self.tolerance]

    def largest(self) -> tuple[str, float, float | None] | None:
        return max(self.differing, key=_difference, default=None)

    def report(self) -> str:
        if not self.differing:
            return f"MATCH: {len(self.rows)} metrics identical to run {self.run_id}"
        if not self.mismatches:
            key, old, new = self.largest()  # type: ignore[misc]
            return (
                f"MATCH within {self.tolerance:g}: {len(self.rows)} metrics of run "
                f"{self.run_id}, {len(self.differing)} not identical; largest difference "
                f"{key} {old:.10g} -> {new:.10g} ({_difference((key, old, new)):.3g}): "
                "expected on another CPU (docs/guarantees.md)"
            )
        width = max(len(k) for k, _, _ in self.mismatches)
        lines = [
            f"MISMATCH: {len(self.mismatches)} of {len(self.rows)} metrics differ by more than "
            f"{self.tolerance:g}"
        ]
        lines.append(f"{'metric'.ljust(width)}  {'recorded':>14}  {'replayed':>14}")
        for key, old, new in self.mismatches:
            shown = "missing" if new is None else f"{new:.10g}"
            lines.append(f"{key.ljust(width)}  {old:>14.10g}  {shown:>14}")
        return "\n".join(lines)


def _same(old: float, new: float | None) -> bool:
    return new is not None and (old == new or (math.isnan(old) and math.isnan(new)))


def _difference(row: tuple[str, float, float | None]) -> float:
    """|recorded - replayed|; infinite when the replay lacks the figure or one side is NaN."""
    _, old, new = row
    if _same(old, new):
        return 0.0
    if new is None or math.isnan(old) or math.isnan(new):
        return math.inf
    return abs(old - new)


def comparable_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Every figure but time and cache figures (``time/…``), which measure the machine."""
    return {k: v for k, v in metrics.items() if not is_timing(k)}


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
    """A logged (string) param back in the type its params.yaml key has; a key the commit's
    params.yaml lacks (a source added for the run) gets the type YAML reads in the text."""
    if isinstance(old, bool):
        return value == "True"
    if isinstance(old, int):
        # A float key written as a whole number in params.yaml (10) is logged as the schema
        # reads it (10.0): the logged text decides.
        try:
            return int(value)
        except ValueError:
            return float(value)
    if isinstance(old, float):
        return float(value)
    if isinstance(old, str):
        return value
    # MLflow logs Python's str() of a value: True/False/None, lists of dicts with None inside
    # (predict.width_bands): YAML reads them once those words are YAML's.
    words = {"True": "true", "False": "false", "None": "null"}
    parsed = yaml.safe_load(re.sub(r"\b(True|False|None)\b", lambda m: words[m.group(1)], value))
    if parsed is None:
        return None if value == "None" else value
    return parsed


def restore_params(path: Path, recorded: dict[str, str]) -> list[str]:
    """Write the run's param values into a params.yaml, adding keys the file lacks (a fetch
    source the run had); return the keys added."""
    tree = yaml.safe_load(path.read_text())
    # The run's sources are the sources: one the commit lists but the run did not have goes.
    used = {key.split(".")[2] for key in recorded if key.startswith("fetch.sources.")}
    sources = tree.get("fetch", {}).get("sources")
    if used and isinstance(sources, dict):
        tree["fetch"]["sources"] = {k: v for k, v in sources.items() if k in used}
    added = []
    for dotted, value in recorded.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if leaf not in node:
            added.append(dotted)
        node[leaf] = _typed(node.get(leaf), value)
    path.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
    return added


def replay_env(worktree: Path) -> dict[str, str]:
    """Stage commands run the commit's code and log into the worktree's throwaway store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(worktree / "src")
    return env


def reproduce(
    client: Any,
    run_id: str,
    root: Path,
    keep: bool = False,
    data: dict[str, Path] | None = None,
    tolerance: float = TOLERANCE,
) -> Replay:
    """Rerun the pipeline of ``run_id`` at its commit, params and data; compare its metrics
    (equal within ``tolerance``, absolute). ``data``: where a source's archive is now (by
    source name), when it is no longer where the run read it."""
    import mlflow  # ~1.3 s to import: only when a run is replayed

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
        recorded = run_params(run)
        env = replay_env(worktree)
        # Share this repo's DVC cache: the data is usually there already, and no remote is needed.
        _run(["dvc", "config", "--local", "cache.dir", cache], worktree, env)
        for name, archive in locate_archives(run, root, worktree, env, data or {}).items():
            # The verified copy, wherever it is now.
            recorded[f"fetch.sources.{name}.path"] = str(archive)
        added = restore_params(worktree / "params.yaml", recorded)
        if added:
            print(f"reproduce: params the commit's params.yaml lacked, added: {added}")
        try:
            _run(["dvc", "checkout", "data.dvc"], worktree, env)
        except CrackdetError:
            _run(["dvc", "pull", "data.dvc"], worktree, env)
        print(f"reproduce: replaying run {run_id} at {commit[:10]} in {worktree}", flush=True)
        # --force --no-run-cache: really rerun every stage instead of restoring cached outputs.
        # Fetch first, so data that differs from the run's stops the replay before training.
        _run(["dvc", "repro", "--force", "--no-run-cache", "--single-item", "fetch"], worktree, env)
        check_manifest(run, Layout(worktree))
        _run(
            ["dvc", "repro", "--force", "--no-run-cache", "--downstream", "split"],
            worktree,
            env,
            quiet=False,
        )
        replay_client = mlflow.MlflowClient(
            tracking_uri=f"sqlite:///{worktree / 'mlruns' / 'mlflow.db'}"
        )
        replayed = comparable_metrics(
            replay_client.get_run(_replay_run_id(replay_client)).data.metrics
        )
    finally:
        if not keep:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)],
                cwd=root,
                capture_output=True,
            )
            shutil.rmtree(tmp, ignore_errors=True)
    metrics = comparable_metrics(run.data.metrics)
    rows = [(k, metrics[k], replayed.get(k)) for k in sorted(metrics)]
    return Replay(run.info.run_id, commit, rows, worktree if keep else None, tolerance)


def _replay_run_id(client: Any) -> str:
    """The one pipeline run of the replay's throwaway store."""
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`crackdet.stage` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise CrackdetError("reproduce: the replay logged no pipeline run")
    return runs[0].info.run_id


def locate_archives(
    run: Any, root: Path, worktree: Path, env: dict[str, str], overrides: dict[str, Path]
) -> dict[str, Path]:
    """The archive each archive source of a run fetched, found and checked by its sha256:
    ``overrides[name]`` (``--data``) if given, else where the run read it (a relative path is
    relative to this repository, not to the replay's worktree), else DVC's cache or remote (by
    the md5 the run recorded). Folder sources are checked by the manifest after fetch."""
    params = run_params(run)
    tags = run.data.tags
    names = [
        key.split(".")[2]
        for key, value in params.items()
        if key.startswith("fetch.sources.")
        and key.endswith(".kind")
        and value in KINDS
        and KINDS[value].replay_archive
    ]
    if "" in overrides:  # --data PATH: the run's only archive source
        if len(names) != 1:
            raise CrackdetError(
                f"--data {overrides['']}: run {run.info.run_id} has {len(names)} archive sources "
                f"({', '.join(names) or 'none'}): name one, as --data SOURCE=PATH"
            )
        overrides = {names[0]: overrides[""]} | {k: v for k, v in overrides.items() if k}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise CrackdetError(
            f"--data {unknown[0]}=…: run {run.info.run_id} has no archive source of that name "
            f"(its archive sources: {', '.join(names) or 'none'})"
        )
    found = {}
    for name in names:
        expected = tags.get(f"data.{name}.archive_sha256")
        if not expected:
            continue
        found[name] = _locate(
            run,
            name,
            params.get(f"fetch.sources.{name}.path", ""),
            expected,
            root,
            worktree,
            env,
            overrides.get(name),
        )
    return found


def _locate(
    run: Any,
    name: str,
    recorded: str,
    expected: str,
    root: Path,
    worktree: Path,
    env: dict[str, str],
    override: Path | None,
) -> Path:
    key = f"fetch.sources.{name}.path"
    where = override or _resolve(recorded, root)
    if where.is_file():
        found = sha256_file(where)
        if found == expected:
            return where.resolve()
        shown = f"--data {name}={override}" if override else f"{key} {recorded}"
        raise CrackdetError(
            f"{shown}: not the archive run {run.info.run_id} used (sha256 {found[:12]}…, the "
            f"run's is {expected}); pass the original with --data {name}=PATH"
        )
    if override is not None:
        raise CrackdetError(
            f"--data {name}={override}: no such file (the run's archive has sha256 {expected})"
        )
    md5 = run.data.tags.get(f"data.{name}.archive_md5")
    from_dvc = _archive_from_dvc(md5, worktree, env)
    if from_dvc is not None and sha256_file(from_dvc) == expected:
        return from_dvc
    raise CrackdetError(
        f"{key} {recorded}: not found relative to {root} nor in DVC's cache or remote (run "
        f"{run.info.run_id} used sha256 {expected}); pass a copy with --data {name}=PATH"
    )


def _resolve(value: str, root: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _archive_from_dvc(md5: str | None, worktree: Path, env: dict[str, str]) -> Path | None:
    """The file DVC stores under ``md5``, checked out of the cache or pulled from the remote
    into the worktree through a throwaway ``.dvc`` file; None when DVC has no such file."""
    if not md5:
        return None
    target = worktree / ".replay-data" / md5
    pointer = worktree / f".replay-{md5}.dvc"
    pointer.write_text(
        yaml.safe_dump({"outs": [{"md5": md5, "path": f".replay-data/{md5}", "hash": "md5"}]})
    )
    for command in (["dvc", "checkout", pointer.name], ["dvc", "pull", pointer.name]):
        try:
            _run(command, worktree, env)
        except CrackdetError:
            continue
        if target.is_file():
            return target
    return None


def check_manifest(run: Any, layout: Layout) -> None:
    """The replay fetched the data the run trained on: same manifest digest, or one line."""
    expected = run.data.tags.get("data.manifest_sha256")
    if not expected:
        return
    found = FetchSummary.read(layout.fetch.summary).manifest_sha256
    if found != expected:
        raise CrackdetError(
            f"reproduce: the replay fetched other data than run {run.info.run_id} (manifest "
            f"sha256 {found[:12]}…, the run's is {expected}); restore the run's data and rerun"
        )
