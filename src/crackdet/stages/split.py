"""DVC stage ``split``: ``python -m crackdet.stages.split`` (params: base, split).

Splits fetch's manifest into train, val and test (crackdet.workflows.split).
"""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.stages._common import run_stage, stage_params
from crackdet.workflows.split import split


def run(layout: Layout) -> None:
    params = stage_params(layout)
    split(layout, params.base, params.split)


def main() -> int:
    return run_stage("split", run)


if __name__ == "__main__":
    sys.exit(main())
