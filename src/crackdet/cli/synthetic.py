"""``crackdet render-photos``: synthetic full-size concrete photos (the default sample photos)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crackdet.workflows.render_photos import render_photos as render


def render_photos(args: argparse.Namespace) -> int:
    paths = render(Path(args.out), args.count, args.seed, args.width, args.height, args.quality)
    for path in paths:
        print(path)
    return 0
