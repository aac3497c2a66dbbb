"""Decoding images: any format Pillow reads, to 8-bit RGB, with limits against bombs.

Patches (``Positive/``, ``Negative/`` in the public set's layout) and full-size photos both go
through :func:`to_rgb`, so a model never sees BGR, alpha or 16-bit values.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from crackdet.core.errors import CrackdetError, first_line

CLASSES = ("Negative", "Positive")  # index = model output: 1 means crack
LABEL_INDEX = {name: i for i, name in enumerate(CLASSES)}
PATCH_SIZE = 227  # the public set's patches; the model's window
# .jfif and .mpo (multi-picture, from some cameras) are JPEG files under other names.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".mpo", ".png", ".tif", ".tiff", ".bmp", ".webp")


def is_image_file(path: Path) -> bool:
    """A file an image folder is read for: a known image suffix, not a dotfile (OS litter)."""
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: EXIF orientation applied, 16-bit scaled, alpha on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode image bytes fully (so truncation is caught now, not mid-training) into RGB."""
    if not data:
        raise CrackdetError(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise CrackdetError(
                    f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} "
                    "(raise fetch.max_pixels if this image is genuine)"
                )
            probe.load()
            return to_rgb(probe)
    except CrackdetError:
        raise
    except Image.DecompressionBombError:
        raise CrackdetError(f"{name}: refused as a decompression bomb (too many pixels)") from None
    except UnidentifiedImageError:
        # Pillow's own text names the in-memory buffer and its address: useless to the user.
        raise CrackdetError(
            f"{name}: not a readable image (not in any image format Pillow knows)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CrackdetError(f"{name}: not a readable image ({first_line(exc)})") from None


def read_rgb(path: Path, check: Callable[[int, int], None]) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB. ``check(width, height)`` sees the size before any
    pixel is decoded and raises :class:`CrackdetError` to refuse the file (a photo too big to
    map costs nothing to turn away)."""
    try:
        with Image.open(path) as image:
            check(*image.size)
            image.load()
            return np.asarray(to_rgb(image), dtype=np.uint8)
    except CrackdetError:
        raise
    except Image.DecompressionBombError:
        raise CrackdetError(f"{path}: refused as a decompression bomb (too many pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CrackdetError(f"{path}: not a readable image ({first_line(exc)})") from None


def load_rgb(path: Path, size: int = PATCH_SIZE) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB, resized to ``size`` when it is not already that size."""
    with Image.open(path) as image:
        rgb = to_rgb(image)
    return as_patch(rgb, size)


def as_patch(rgb: Image.Image, size: int = PATCH_SIZE) -> np.ndarray:
    """An RGB image as the model's uint8 ``size`` x ``size`` x 3 input: resized (bilinear) when
    it is not that size already, as every training and test patch was."""
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
