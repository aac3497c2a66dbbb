"""DVC stage ``split``: ``python -m crackdet.stages.split`` (params: base, split)."""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.data.splitting import run_split
from crackdet.stages._common import run_stage, stage_params


def run(layout: Layout) -> None:
    params = stage_params(layout)
    result, summary = run_split(params.split, params.base.seed, layout)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in result.splits.items())
    print(f"split: {sizes}; fingerprint {summary.fingerprint[:12]}")


def main() -> int:
    return run_stage("split", run)


if __name__ == "__main__":
    sys.exit(main())
