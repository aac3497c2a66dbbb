"""Where things are: this checkout, the venv running the tests, the shared real data; and the
rule for a missing tool (skip here, fail under CI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT.parent / "shared" / "data"
OZGENEL_4K = SHARED_DATA / "ozgenel-4k.zip"
BIN = Path(sys.executable).parent  # the venv running pytest: dvc, crackdet and python live here


def needs_real_sample() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not OZGENEL_4K.exists(), reason=f"real sample not present at {OZGENEL_4K}"
    )


def in_ci() -> bool:
    """``CI`` is set (GitHub Actions, ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(missing: list[str]) -> None:
    """Skip when tools are missing here; fail under CI, where a skip would hide a gap."""
    if not missing:
        return
    message = f"missing: {'; '.join(missing)}"
    if in_ci():
        pytest.fail(f"{message} (.ci/run installs them)", pytrace=False)
    pytest.skip(message)
