"""DVC stage ``fetch``: ``python -m crackdet.stages.fetch`` (params: base, fetch).

Brings every source into ``outputs/fetch`` (crackdet.workflows.fetch).
"""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.stages._common import run_stage, stage_params
from crackdet.workflows.fetch import fetch


def run(layout: Layout) -> None:
    params = stage_params(layout)
    fetch(layout, params.base, params.fetch)


def main() -> int:
    return run_stage("fetch", run)


if __name__ == "__main__":
    sys.exit(main())
