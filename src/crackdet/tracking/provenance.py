"""Provenance tags: the git commit, the dvc.lock hashes and the data digests behind a run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from crackdet.core.layout import Layout
from crackdet.data.records import FetchSummary, SplitSummary

DATA_SOURCES_TAG = "data.sources"  # the run's sources, comma-separated (registry cards read it)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


# What a run's outputs are made from, as git sees it: code, pins, params, the pipeline and the
# data pointers. Anything else may change without the run being "uncommitted": dvc.lock and the
# metric files the pipeline itself writes, docs, tests.
INPUT_FILES = ("params.yaml", "dvc.yaml", "pyproject.toml", "requirements.lock")
INPUT_DIRS = ("src/",)
INPUT_SUFFIXES = (".dvc",)


def is_input(path: str) -> bool:
    return path in INPUT_FILES or path.startswith(INPUT_DIRS) or path.endswith(INPUT_SUFFIXES)


def changed_inputs(root: Path) -> list[str] | None:
    """Input files (``is_input``) that differ from HEAD, new ones included; None without git."""
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    if status is None:
        return None
    entries = status.split("\0")
    paths: list[str] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC":  # a rename or copy: its source path follows as the next entry
            paths.append(entries[i])
            i += 1
    changed = {p for p in paths if is_input(p)}
    if os.environ.get("DVC_EXP_NAME"):
        # `dvc exp run -S …` writes the experiment's params into params.yaml, commits them to
        # the experiment's ref and the run records them: not uncommitted changes.
        changed.discard("params.yaml")
    return sorted(changed)


def git_state(root: Path) -> dict[str, str]:
    """Commit, dirty flag and the changed inputs; outputs, dvc.lock and the MLflow store are not
    inputs, so a pipeline that rewrites its tracked metric files leaves the flag false."""
    commit = _git(root, "rev-parse", "HEAD")
    changed = changed_inputs(root) if commit is not None else None
    if commit is None or changed is None:
        return {"git.commit": "none", "git.dirty": "unknown"}
    tags = {"git.commit": commit, "git.dirty": str(bool(changed)).lower()}
    if changed:
        shown = ", ".join(changed[:10]) + (
            f" and {len(changed) - 10} more" if len(changed) > 10 else ""
        )
        tags["git.dirty_inputs"] = shown
    return tags


def dvc_lock_hashes(root: Path, stages: tuple[str, ...]) -> dict[str, str]:
    """``{"dvc.fetch.outputs/fetch": md5, …}`` for the named upstream stages in dvc.lock."""
    lock = Layout(root).dvc_lock
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


def data_lineage(layout: Layout) -> dict[str, str]:
    """Tags naming the exact data: source, archive and manifest digests, split fingerprint."""
    fetched = FetchSummary.read(layout.fetch.summary)
    split = SplitSummary.read(layout.split.summary)
    tags = {
        DATA_SOURCES_TAG: ",".join(fetched.sources),
        "data.manifest_sha256": fetched.manifest_sha256,
        "data.count": str(fetched.count),
        "data.split_fingerprint": split.fingerprint,
        "data.test_fingerprint": split.test_fingerprint,
        "data.split_strategy": split.strategy,
        "data.split_groups": str(split.groups),
        "data.duplicate_groups": str(fetched.duplicates["groups"]),
        "data.skipped": str(len(fetched.skipped)),
        "data.left_out": str(len(fetched.left_out)),
    }
    for name, source in fetched.sources.items():
        tags[f"data.{name}.count"] = str(source.count)
        tags[f"data.{name}.licence"] = source.licence
        if source.archive_sha256:
            tags[f"data.{name}.archive_sha256"] = source.archive_sha256
        if source.archive_md5:
            tags[f"data.{name}.archive_md5"] = source.archive_md5
    return tags
