"""DVC stage ``fetch``: ``python -m crackdet.stages.fetch``."""

from __future__ import annotations

import sys
from pathlib import Path

from crackdet.fetch import FetchSummary, fetch
from crackdet.stages._common import run_stage, stage_params


def run(root: Path) -> FetchSummary:
    params = stage_params(root)
    summary = fetch(params.fetch, params.base.seed, root)
    skipped = f", {len(summary.skipped)} unreadable left out" if summary.skipped else ""
    print(
        f"fetch: {summary.count} images from {summary.source} "
        f"({', '.join(f'{k} {v}' for k, v in summary.per_class.items())}{skipped}); "
        f"manifest sha256 {summary.manifest_sha256[:12]}"
    )
    return summary


def main() -> int:
    return run_stage("fetch", run)


if __name__ == "__main__":
    sys.exit(main())
