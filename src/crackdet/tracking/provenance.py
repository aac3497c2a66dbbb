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
