"""``crackdet reproduce``: rerun a run's pipeline at its commit, params and data and compare
every recorded metric (crackdet.tracking.replay)."""

from __future__ import annotations

from pathlib import Path

from crackdet.tracking.replay import TOLERANCE, Replay
from crackdet.tracking.replay import reproduce as replay_run
from crackdet.tracking.store import client_for


def reproduce(
    root: Path,
    run_id: str,
    *,
    keep: bool = False,
    data: dict[str, Path] | None = None,
    tolerance: float = TOLERANCE,
) -> Replay:
    """Replay ``run_id`` of this project's store; ``data``: a source's archive by name, where
    it is now; ``tolerance``: the largest absolute difference that still matches."""
    return replay_run(client_for(root), run_id, root, keep=keep, data=data, tolerance=tolerance)
