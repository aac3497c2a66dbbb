"""Progress bars for the long loops (feature extraction, training epochs, mapping photos).

Shown on a terminal only: never when stderr is a file or a pipe (logs, ``dvc queue logs``,
captured test output) and never in CI (``CI`` set, as GitHub Actions and ``.ci/run`` do), so
logs hold the outcome lines and not hundreds of redraws.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def in_ci() -> bool:
    """Whether this runs in CI (``CI`` set and not false): some CI runners give a terminal."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
) -> tqdm:
    """A tqdm bar on stderr that disappears when done (the caller prints the outcome)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        # None: tqdm draws only when its file is a terminal.
        disable=True if in_ci() else None,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def say(line: str, *, error: bool = False) -> None:
    """Print a line (stdout, or stderr for ``error``) without tearing an active bar."""
    tqdm.write(line, file=sys.stderr if error else sys.stdout)
    (sys.stderr if error else sys.stdout).flush()
