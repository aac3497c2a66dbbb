"""``crackdet render-photos``: synthetic full-size concrete photos (the default sample photos)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crackdet.data.sources.synthetic import write_photo_set


def render_photos(args: argparse.Namespace) -> int:
    paths = write_photo_set(
        Path(args.out), args.count, args.seed, args.width, args.height, quality=args.quality
    )
    for path in paths:
        print(path)
    return 0
