"""DVC stage ``evaluate``: ``python -m crackdet.stages.evaluate`` (params: evaluate, promote).

Scores the checkpoint on the test split, logs into the pipeline's run, registers and promotes
the model version (crackdet.workflows.evaluate).
"""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.stages._common import run_stage, stage_params
from crackdet.workflows.evaluate import evaluate


def run(layout: Layout) -> None:
    params = stage_params(layout)
    evaluate(layout, params.evaluate, params.promote)


def main() -> int:
    return run_stage("evaluate", run)


if __name__ == "__main__":
    sys.exit(main())
