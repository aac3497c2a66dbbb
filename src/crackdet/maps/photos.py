"""Photos to map: found in a folder, read as RGB with their EXIF orientation, refused when too big,
and rescaled so one window covers what a training patch covered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.data.images import is_image_file, read_rgb


def read_photo(
    path: Path, max_pixels: int, scale: float | Callable[[int, int], float] = 1.0
) -> np.ndarray:
    """A photo as uint8 HxWx3 RGB; refuse, before decoding its pixels, a photo that has more
    than ``max_pixels`` pixels or would have at ``scale`` (the size it is mapped at; a function
    of (height, width) gives the largest scale a photo of that size is mapped at)."""

    def check(width: int, height: int) -> None:
        if width * height > max_pixels:
            raise CrackdetError(
                f"{path}: {width}x{height} = {width * height} pixels exceeds "
                f"predict.max_pixels ({max_pixels}); downscale it or raise the limit"
            )
        mapped = scale(height, width) if callable(scale) else scale
        mapped_w, mapped_h = max(1, round(width * mapped)), max(1, round(height * mapped))
        if mapped_w * mapped_h > max_pixels:
            raise CrackdetError(
                f"{path}: {width}x{height} at predict.scale {mapped:g} is mapped at "
                f"{mapped_w}x{mapped_h} = {mapped_w * mapped_h} pixels, over "
                f"predict.max_pixels ({max_pixels}); lower predict.scale or raise the limit"
            )

    return read_rgb(path, check)


@dataclass(frozen=True)
class PhotoFolder:
    """The photos of a folder, and what in it is not a photo (left out, but named)."""

    photos: list[Path]
    left_out: list[Path]


def list_photos(folder: Path) -> PhotoFolder:
    if not folder.is_dir():
        raise CrackdetError(f"{folder}: photo folder not found (dvc pull data.dvc, or add photos)")
    entries = sorted(folder.iterdir())
    photos = [p for p in entries if is_image_file(p)]
    return PhotoFolder(photos, [p for p in entries if p not in photos])


def left_out_line(command: str, left_out: list[Path]) -> str:
    """The one line that names what a command did not map (no file is skipped silently)."""
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in left_out[:10])
    more = f" and {len(left_out) - 10} more" if len(left_out) > 10 else ""
    return f"{command}: left out {len(left_out)} entries that are not photos: {names}{more}"
