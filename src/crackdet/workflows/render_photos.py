"""``crackdet render-photos``: synthetic full-size concrete photos (the default sample photos
that predict_samples maps)."""

from __future__ import annotations

from pathlib import Path

from crackdet.data.sources.synthetic import write_photo_set


def render_photos(
    out: Path, count: int, seed: int, width: int, height: int, quality: int
) -> list[Path]:
    """Write ``count`` photos into ``out``; return their paths."""
    return write_photo_set(out, count, seed, width, height, quality=quality)
