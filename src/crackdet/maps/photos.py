"""Photos to map: found in a folder, read as RGB with their EXIF orientation, refused when too big,
and rescaled so one window covers what a training patch covered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from crackdet.core.errors import CrackdetError, first_line
from crackdet.data.images import is_image_file, to_rgb


def read_photo(path: Path, max_pixels: int) -> np.ndarray:
    """A photo as uint8 HxWx3 RGB; refuse oversize images before decoding their pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise CrackdetError(
                    f"{path}: {width}x{height} = {width * height} pixels exceeds "
                    f"predict.max_pixels ({max_pixels}); downscale it or raise the limit"
                )
            image.load()
            return np.asarray(to_rgb(image), dtype=np.uint8)
    except CrackdetError:
        raise
    except Image.DecompressionBombError:
        raise CrackdetError(f"{path}: refused as a decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CrackdetError(f"{path}: not a readable image ({first_line(exc)})") from None


def resize_photo(photo: np.ndarray, scale: float) -> np.ndarray:
    """Rescale so one window covers what a training patch covered (``predict.scale``)."""
    if scale == 1.0:
        return photo
    height, width = photo.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))


def list_photos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CrackdetError(f"{folder}: photo folder not found (dvc pull data.dvc, or add photos)")
    return sorted(p for p in folder.iterdir() if is_image_file(p))
