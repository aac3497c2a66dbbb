"""``crackdet trace``: where a run's or a model version's figures came from (data, code,
params, upstream runs), read from the MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crackdet.tracking.lineage import trace as trace_run
from crackdet.tracking.store import client_for


def trace(root: Path, target: str) -> dict[str, Any]:
    """The lineage of ``target`` (a run id or ``models:/name/version|@alias``)."""
    return trace_run(client_for(root), target, root)
