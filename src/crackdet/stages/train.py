"""DVC stage ``train``: ``python -m crackdet.stages.train`` (params: base, train).

Trains the classifier and creates the pipeline's MLflow run (crackdet.workflows.train).
"""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.stages._common import run_stage, stage_params
from crackdet.workflows.train import train


def run(layout: Layout) -> None:
    params = stage_params(layout)
    train(layout, params.base, params.train)


def main() -> int:
    return run_stage("train", run)


if __name__ == "__main__":
    sys.exit(main())
