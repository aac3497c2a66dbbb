"""DVC stage ``predict_samples``: ``python -m crackdet.stages.predict_samples`` (params: predict).

Maps every photo in ``data/photos/`` with the trained checkpoint
(crackdet.workflows.predict_samples).
A photo that cannot be read is named on one line and the others are still mapped; the stage then
fails so DVC does not record an incomplete result.
"""

from __future__ import annotations

import sys

from crackdet.core.layout import Layout
from crackdet.stages._common import run_stage, stage_params
from crackdet.workflows.predict_samples import predict_samples


def run(layout: Layout) -> None:
    params = stage_params(layout)
    predict_samples(layout, params.predict)


def main() -> int:
    return run_stage("predict_samples", run)


if __name__ == "__main__":
    sys.exit(main())
