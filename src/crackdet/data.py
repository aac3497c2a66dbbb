"""Manifests, image decoding and the patch data set.

A manifest is a CSV with one row per image: ``path`` (relative to the images folder, posix),
``label`` (``Positive`` or ``Negative``, the public set's folder names), ``sha256`` (of the file's
bytes), ``width`` and ``height``. Fetch writes it; split writes one per split; train and evaluate
read them.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from crackdet.errors import CrackdetError, first_line
from crackdet.io import write_text

CLASSES = ("Negative", "Positive")  # index = model output: 1 means crack
LABEL_INDEX = {name: i for i, name in enumerate(CLASSES)}
PATCH_SIZE = 227
MANIFEST_FIELDS = ("path", "label", "sha256", "width", "height")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    sha256: str
    width: int
    height: int

    @property
    def target(self) -> int:
        return LABEL_INDEX[self.label]


def write_manifest(target: Path, rows: list[ManifestRow]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for row in rows:
        writer.writerow([row.path, row.label, row.sha256, row.width, row.height])
    write_text(target, buf.getvalue())


def read_manifest(path: Path) -> list[ManifestRow]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
                raise CrackdetError(
                    f"{path}: not a crackdet manifest (columns: {', '.join(MANIFEST_FIELDS)})"
                )
            rows = []
            for line, rec in enumerate(reader, start=2):
                if rec["label"] not in LABEL_INDEX:
                    raise CrackdetError(f"{path}:{line}: unknown label {rec['label']!r}")
                rows.append(
                    ManifestRow(
                        rec["path"],
                        rec["label"],
                        rec["sha256"],
                        int(rec["width"]),
                        int(rec["height"]),
                    )
                )
            return rows
    except FileNotFoundError:
        raise CrackdetError(f"{path}: not found; run the stage that writes it first") from None


def manifest_digest(rows: list[ManifestRow]) -> str:
    """sha256 over the sorted (path, label, sha256) triples: names the exact data, order-free."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        digest.update(f"{row.path}\t{row.label}\t{row.sha256}\n".encode())
    return digest.hexdigest()


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


def load_rgb(path: Path, size: int = PATCH_SIZE) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB, resized to ``size`` when it is not already that size."""
    with Image.open(path) as image:
        rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
