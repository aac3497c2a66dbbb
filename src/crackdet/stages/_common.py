"""What every stage entry point shares: params from the repo root and one-line errors."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crackdet.errors import CrackdetError
from crackdet.params import Params, load_params
from crackdet.tracking import repo_root

# Out of space, over quota, over the file size limit, read-only file system.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def stage_params(root: Path) -> Params:
    return load_params(root / "params.yaml")


def run_stage(name: str, run: Callable[[Path], Any]) -> int:
    """Run a stage at the repo root; a CrackdetError becomes one line on stderr and exit 2."""
    try:
        run(repo_root())
    except CrackdetError as exc:
        print(f"crackdet {name}: error: {exc}", file=sys.stderr)
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
