"""``crackdet promote``: move an alias to a version by hand, through the same gates as the
automatic promotion (the candidate re-scored on this workspace's test split when it can be)."""

from __future__ import annotations

from typing import Any

from crackdet.core.layout import Layout
from crackdet.core.params import EvaluateParams, PromoteParams
from crackdet.tracking.promotion import manual_promote
from crackdet.tracking.registry import get_version
from crackdet.tracking.store import client_for
from crackdet.workflows.evaluate import workspace_reevaluator


def promote(
    layout: Layout,
    cfg: EvaluateParams,
    gates: PromoteParams,
    name: str,
    version: str,
    alias: str,
    reason: str,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Point ``name@alias`` at ``version``; return the promotion log's new entry."""
    client = client_for(layout.root)
    candidate = get_version(client, name, version)
    rescore = workspace_reevaluator(layout, candidate, cfg.batch_size)
    return manual_promote(
        client, name, version, alias, reason, gates, force=force, reevaluate=rescore
    )
