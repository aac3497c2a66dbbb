"""What every stage entry point shares: params from the workspace and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from crackdet.core.errors import CrackdetError, error_lines
from crackdet.core.io import STORAGE_ERRNOS
from crackdet.core.layout import Layout, repo_root
from crackdet.core.params import Params, load_params


def stage_params(layout: Layout) -> Params:
    return load_params(layout.params)


def run_stage(name: str, run: Callable[[Layout], Any]) -> int:
    """Run a stage in the workspace; a CrackdetError becomes one line on stderr and exit 2."""
    try:
        run(Layout(repo_root()))
    except CrackdetError as exc:
        print(error_lines(name, exc), file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        # Full disk or read-only folder wherever it happened (outputs, MLflow artifacts).
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"crackdet {name}: error: {where}{exc.strerror}; free disk space or make the folder "
            "writable, then rerun",
            file=sys.stderr,
        )
        return 2
    return 0
