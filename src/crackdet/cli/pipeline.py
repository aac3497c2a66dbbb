"""``crackdet fetch|split|train|evaluate|predict-samples`` and ``crackdet check-params``."""

from __future__ import annotations

import argparse
import subprocess
import sys

from crackdet.core.params import load_params


def run_stage(args: argparse.Namespace) -> int:
    """A stage exactly as ``dvc repro`` runs it: ``python -m crackdet.stages.<name>``."""
    return subprocess.run([sys.executable, "-m", f"crackdet.stages.{args.stage}"]).returncode


def check_params(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    print(f"{args.params}: valid ({len(params.as_flat_dict())} keys)")
    return 0
