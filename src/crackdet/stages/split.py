"""DVC stage ``split``: ``python -m crackdet.stages.split``."""

from __future__ import annotations

import sys
from pathlib import Path

from crackdet.split import SplitResult, run_split
from crackdet.stages._common import run_stage, stage_params


def run(root: Path) -> SplitResult:
    params = stage_params(root)
    result = run_split(params.split, params.base.seed, root)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in result.splits.items())
    print(f"split: {sizes}; fingerprint {result.fingerprint[:12]}")
    return result


def main() -> int:
    return run_stage("split", run)


if __name__ == "__main__":
    sys.exit(main())
