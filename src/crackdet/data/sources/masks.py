"""The ``masks`` source: photos with pixel crack masks, cut into labelled training windows.

A folder (or archive) holds ``images/<name>.<ext>``, ``masks/<name>.png`` (255, or any one
non-zero level = crack pixel: :func:`read_mask`) and optionally ``masks_planking/<name>.png``
(the wood grain timber formwork leaves: a classic false alarm). Every photo is resized by each
of the source's scales and cut into the very windows a crack map at that scale slides
(crackdet.data.windows). With ``side`` a window's side in photo pixels (all lengths are shares
of it, so one rule labels every scale alike), a window is

- a **crack** when the square at its centre (``centre`` x side) holds at least
  ``crack_length`` x side crack pixels: a 1-px crack crossing a good part of what the model
  sees, not one grazing an edge it might not show;
- **clean** when no crack pixel lies in the window or within ``margin`` x side of it; clean and
  holding ``planking_length`` x side planking pixels, a **hard negative**;
- left out otherwise (a crack at the edge is neither a clear hit nor a clear miss), counted.

Every crack window is kept; of the clean ones a seeded sample of ``max_clean`` in all, hard
negatives first up to half of it, so the empty concrete of many windows does not drown the
cracks.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import file_digests
from crackdet.core.params import MasksSource
from crackdet.data.archive import extract
from crackdet.data.images import IMAGE_SUFFIXES, PATCH_SIZE, is_image_file, read_rgb
from crackdet.data.sources.base import Brought, FetchContext, SourceKind, register_kind
from crackdet.data.sources.labelled import ExtractLimits, Imported, resolve_path
from crackdet.data.windows import pad_to_window, resize_photo, window_grid

MASKS, PLANKING = "masks", "masks_planking"
ORIENTATION = 0x0112  # the EXIF tag
OVERLAP = 0.5  # the crack maps' default overlap: the windows the maps will score


@dataclass(frozen=True)
class MaskedPhoto:
    """One photo of a masks data set with its truth masks."""

    name: str
    image: Path
    mask: Path
    planking: Path | None


@dataclass(frozen=True)
class CutSummary:
    """What cutting a masks source gave, per kind of window."""

    photos: int
    crack: int
    clean: int
    planking: int  # clean windows on planking (kept as hard negatives, counted in clean too)
    ambiguous: int  # crack pixels near the edge only: left out
    sampled_out: int  # clean windows beyond max_clean_per_photo: left out


def layout_root(root: Path) -> Path:
    """``root`` itself, or its only subfolder when an archive wraps everything in one folder."""
    if (root / "images").is_dir():
        return root
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(children) == 1 and (children[0] / "images").is_dir():
        return children[0]
    raise CrackdetError(
        f"{root}: no images/ folder (expected images/<name>.<ext> and masks/<name>.png)"
    )


def find_photos(
    root: Path, photos: str = "*", key: str = "photos"
) -> tuple[list[MaskedPhoto], list[str]]:
    """Every ``images/<name>.<ext>`` whose file name matches the glob ``photos``, paired with
    ``masks/<name>.png`` (and its planking mask); and every entry of the set that is not used,
    named with why: entries of ``images/`` that are not photos, masks without a photo, files in
    the mask folders that are not ``.png`` and entries beside the three folders. Masks of
    photos the glob leaves out are the user's choice, not named."""
    base = layout_root(root)
    entries = sorted((base / "images").iterdir())
    images = [p for p in entries if is_image_file(p)]
    left_out = [f"images/{p.name} (not a photo)" for p in entries if p not in images]
    if not images:
        raise CrackdetError(f"{base / 'images'}: no photos ({', '.join(IMAGE_SUFFIXES)})")
    chosen = [p for p in images if fnmatch.fnmatchcase(p.name, photos)]
    if not chosen:
        raise CrackdetError(f"{key} {photos!r}: matches none of the photos in {base / 'images'}")
    samples = []
    for image in chosen:
        mask = base / MASKS / f"{image.stem}.png"
        if not mask.is_file():
            raise CrackdetError(f"{image}: no crack mask {mask}; every photo needs one")
        planking = base / PLANKING / f"{image.stem}.png"
        samples.append(
            MaskedPhoto(image.stem, image, mask, planking if planking.is_file() else None)
        )
    return samples, sorted(left_out + _unused_entries(base, {p.stem for p in images}))


def _unused_entries(base: Path, stems: set[str]) -> list[str]:
    """Entries of a masks set that no photo uses, named with why (sorted by path)."""
    named = []
    for entry in sorted(base.iterdir()):
        if entry.name not in ("images", MASKS, PLANKING):
            slash = "/" if entry.is_dir() else ""
            named.append(f"{entry.name}{slash} (not images/, {MASKS}/ or {PLANKING}/)")
    for folder in (MASKS, PLANKING):
        if not (base / folder).is_dir():
            continue
        for entry in sorted((base / folder).iterdir()):
            rel = f"{folder}/{entry.name}"
            if entry.suffix != ".png" or not entry.is_file():
                named.append(f"{rel} (not a .png mask)")
            elif entry.stem not in stems:
                named.append(f"{rel} (no photo images/{entry.stem}.*)")
    return named


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A truth mask as a bool HxW array, checked against ``shape``.

    A pixel's value is its brightest colour channel (transparent pixels count as 0), so a
    white, grey or red crack on black or on transparency all read alike. A mask of two levels
    (0/1, 0/100, 0/255, 0/65535) marks the crack with its non-zero level. More levels are taken
    for a 0/255 mask softened by resampling or lossy saving, set at half the full scale, only
    when its top reaches that half and few pixels (``SOFT_SHARE``) lie between a quarter and
    three quarters of it; anything else (a label map 0/1/2, a photo) is refused rather than
    guessed."""
    try:
        with Image.open(path) as image:
            # The size is checked before any pixel is decoded: the photo's is bounded already.
            if image.size != (shape[1], shape[0]):
                raise CrackdetError(
                    f"{path}: mask is {image.width}x{image.height} but its photo is "
                    f"{shape[1]}x{shape[0]}; masks must match their photo pixel for pixel"
                )
            image.load()
            values, full = _mask_values(image)
    except CrackdetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CrackdetError(f"{path}: not a readable mask image ({first_line(exc)})") from None
    levels = np.flatnonzero(np.bincount(values.ravel()))
    if len(levels) <= 2 and (len(levels) < 2 or levels[0] == 0):
        return values > 0
    half = (full + 1) // 2
    between = np.count_nonzero((values > full / 4) & (values < full * 3 / 4))
    if levels[-1] < half or between > SOFT_SHARE * values.size:
        shown = ", ".join(str(v) for v in levels[:5])
        shown = f"levels {shown}" if len(levels) <= 5 else f"{len(levels)} levels: {shown}, …"
        raise CrackdetError(
            f"{path}: not a two-level mask ({shown}); save crack pixels as 255 (or any one "
            "value) and all others as 0"
        )
    return values >= half


SOFT_SHARE = 0.05  # in-between pixels a softened 0/255 mask may have (its edges)


def _mask_values(image: Image.Image) -> tuple[np.ndarray, int]:
    """A mask's pixel values (unsigned integers, HxW) and its full scale (255 or 65535)."""
    if image.mode.startswith("I"):  # 16-bit PNGs
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:  # 32-bit: no mask needs it
            raise ValueError("pixel values outside 0..65535")
        return values.astype(np.uint16), 65535
    if image.mode == "L":  # the common 0/255 mask: no conversion
        return np.asarray(image), 255
    if image.mode in ("1", "P") or image.mode not in ("LA", "RGB", "RGBA"):
        image = image.convert("RGBA")
    rgba = np.asarray(image)
    brightest = rgba.max(axis=2) if image.mode == "RGB" else rgba[..., :-1].max(axis=2)
    if image.mode == "RGB":
        return brightest, 255
    # Transparent pixels are background: the value is scaled by the pixel's opacity.
    alpha = rgba[..., -1].astype(np.uint16)
    return ((brightest.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8), 255


class PixelSums:
    """The sum of an image's values inside any rectangle, from one integral image (thousands
    of windows cost one cumulative sum)."""

    def __init__(self, values: np.ndarray) -> None:
        self.height, self.width = values.shape
        kind = np.int64 if values.dtype == bool else np.float64
        self.integral = np.zeros((self.height + 1, self.width + 1), dtype=kind)
        self.integral[1:, 1:] = values.astype(kind).cumsum(0).cumsum(1)

    def box(self, y0: float, x0: float, y1: float, x1: float) -> float:
        """The sum over [y0, y1) x [x0, x1), clipped to the image."""
        top, left = min(max(round(y0), 0), self.height), min(max(round(x0), 0), self.width)
        bottom, right = min(max(round(y1), 0), self.height), min(max(round(x1), 0), self.width)
        if bottom <= top or right <= left:
            return 0
        i = self.integral
        return i[bottom, right] - i[top, right] - i[bottom, left] + i[top, left]


class PixelCounts(PixelSums):
    """Set pixels of a bool mask inside any rectangle."""

    def box(self, y0: float, x0: float, y1: float, x1: float) -> int:
        return int(super().box(y0, x0, y1, x1))


def read_photo_rgb(path: Path, max_pixels: int) -> np.ndarray:
    """A photo as uint8 HxWx3 RGB, refused before decoding when it has too many pixels."""

    def check(width: int, height: int) -> None:
        if width * height > max_pixels:
            raise CrackdetError(
                f"{path}: {width}x{height} pixels exceeds fetch.max_pixels "
                f"({max_pixels}); raise the limit if this photo is genuine"
            )

    return read_rgb(path, check)


@dataclass(frozen=True)
class _Window:
    photo: int  # index into the photos
    scale: float
    y: int  # top-left corner in the resized photo
    x: int


def label_windows(
    cracks: PixelCounts,
    planks: PixelCounts | None,
    starts: list[tuple[int, int]],
    scale: float,
    source: MasksSource,
) -> tuple[list[int], list[int], list[int], int]:
    """Indices into ``starts`` (window corners in the photo resized by ``scale``) of the crack,
    clean and hard-negative windows, and how many were ambiguous (see the module docstring)."""
    side = PATCH_SIZE / scale
    inset = side * (1 - source.centre) / 2
    margin = side * source.margin
    crack, clean, hard, ambiguous = [], [], [], 0
    for i, (y, x) in enumerate(starts):
        top, left = y / scale, x / scale
        centre = cracks.box(top + inset, left + inset, top + side - inset, left + side - inset)
        if centre >= source.crack_length * side:
            crack.append(i)
        elif cracks.box(top - margin, left - margin, top + side + margin, left + side + margin):
            ambiguous += 1
        elif planks and planks.box(top, left, top + side, left + side) >= (
            source.planking_length * side
        ):
            hard.append(i)
        else:
            clean.append(i)
    return crack, clean, hard, ambiguous


def cut_windows(
    root: Path,
    source: MasksSource,
    images: Path,
    seed: int,
    max_pixels: int,
    key: str = "fetch.sources.<name>",
) -> tuple[CutSummary, list[str]]:
    """Write the labelled windows of every chosen photo into ``images/{Positive,Negative}`` as
    ``<photo>_s<scale>_y<y>_x<x>.png`` (lossless: the model sees the photo's own pixels).
    Returns what was cut and the entries left out of the source, named. ``key``: the
    source's params key, named when it gives no window of a kind."""
    photos, left_out = find_photos(root, source.photos, f"{key}.photos")
    crack: list[_Window] = []
    clean: list[_Window] = []
    hard: list[_Window] = []
    ambiguous = 0
    for number, sample in enumerate(photos):  # label first: which clean ones are kept is global
        shape = read_photo_size(sample.image, max_pixels)
        cracks = PixelCounts(read_mask(sample.mask, shape))
        planks = PixelCounts(read_mask(sample.planking, shape)) if sample.planking else None
        for scale in source.scales:
            starts = scaled_starts(shape, scale)
            c, n, h, a = label_windows(cracks, planks, starts, scale, source)
            for kept, indices in ((crack, c), (clean, n), (hard, h)):
                kept += [_Window(number, scale, *starts[i]) for i in indices]
            ambiguous += a
    _check_both_kinds(len(photos), len(crack), len(clean) + len(hard), key)
    rng = np.random.default_rng([seed, len(photos)])
    total = len(clean) + len(hard)
    if source.max_clean and total > source.max_clean:
        n_hard = min(len(hard), source.max_clean // 2)
        n_clean = min(len(clean), source.max_clean - n_hard)
        hard = [hard[i] for i in np.sort(rng.choice(len(hard), n_hard, replace=False))]
        clean = [clean[i] for i in np.sort(rng.choice(len(clean), n_clean, replace=False))]
    _write_windows(
        photos,
        {"Positive": crack, "Negative": sorted(hard + clean, key=_order)},
        images,
        max_pixels,
    )
    summary = CutSummary(
        photos=len(photos),
        crack=len(crack),
        clean=len(clean) + len(hard),
        planking=len(hard),
        ambiguous=ambiguous,
        sampled_out=total - len(clean) - len(hard),
    )
    return summary, left_out


def _check_both_kinds(photos: int, crack: int, clean: int, key: str) -> None:
    """A source needs windows of both kinds; say which params key would give the missing kind
    (the labelled sources' hint names a Negative/ folder a masks source does not have)."""
    if not crack:
        raise CrackdetError(
            f"{key}: no crack windows in {photos} photos (none holds {key}.crack_length x side "
            f"crack pixels at its centre); check that masks/ marks the cracks or lower "
            f"{key}.crack_length"
        )
    if not clean:
        raise CrackdetError(
            f"{key}: no clean windows in {photos} photos (every window has crack pixels within "
            f"{key}.margin of it); add photos with crack-free areas or lower {key}.margin"
        )


def _order(window: _Window) -> tuple[int, float, int, int]:
    return window.photo, window.scale, window.y, window.x


def read_photo_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """A photo's (height, width) as it is read for windows (EXIF orientation applied, as
    ``to_rgb`` applies it), refused when it has more than ``max_pixels``."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(ORIENTATION) in (5, 6, 7, 8):  # a quarter turn
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as exc:
        raise CrackdetError(f"{path}: not a readable image ({first_line(exc)})") from None
    if width * height > max_pixels:
        raise CrackdetError(
            f"{path}: {width}x{height} pixels exceeds fetch.max_pixels ({max_pixels}); "
            "raise the limit if this photo is genuine"
        )
    return height, width


def scaled_starts(shape: tuple[int, int], scale: float) -> list[tuple[int, int]]:
    """The window corners a crack map slides over a photo of ``shape`` resized by ``scale``."""
    height = max(round(shape[0] * scale), 1)
    width = max(round(shape[1] * scale), 1)
    return window_grid(max(height, PATCH_SIZE), max(width, PATCH_SIZE), PATCH_SIZE, OVERLAP)


def _write_windows(
    photos: list[MaskedPhoto], labelled: dict[str, list[_Window]], images: Path, max_pixels: int
) -> None:
    """Write the kept windows, one photo and scale resized at a time (memory stays bounded)."""
    for label in labelled:
        (images / label).mkdir(parents=True, exist_ok=True)
    for number, sample in enumerate(photos):
        photo = None
        for scale in sorted({w.scale for ws in labelled.values() for w in ws if w.photo == number}):
            photo = read_photo_rgb(sample.image, max_pixels) if photo is None else photo
            scaled = pad_to_window(resize_photo(photo, scale), PATCH_SIZE)
            for label, windows in labelled.items():
                for w in windows:
                    if w.photo != number or w.scale != scale:
                        continue
                    tile = scaled[w.y : w.y + PATCH_SIZE, w.x : w.x + PATCH_SIZE]
                    name = f"{sample.name}_s{scale:g}_y{w.y}_x{w.x}.png"
                    Image.fromarray(tile).save(images / label / name, compress_level=1)


def photo_of(window_file: str) -> str:
    """The photo a window file was cut from (``<photo>_s<scale>_y<y>_x<x>.png``): its group."""
    return window_file.rsplit("_s", 1)[0]


@dataclass(frozen=True)
class MasksFolder:
    """A masks source made readable: its folder (extracted from an archive into ``work``)."""

    folder: Path
    archive_sha256: str | None
    archive_md5: str | None


def import_masks(path: Path, work: Path, limits: ExtractLimits) -> MasksFolder:
    """A masks source's folder: read in place, or an archive extracted into ``work``."""
    if path.is_dir():
        return MasksFolder(path, None, None)
    sha256, md5 = file_digests(path)
    folder = work / "extracted"
    extract(path, folder, max_files=limits.max_files, max_bytes=limits.max_bytes)
    return MasksFolder(folder, sha256, md5)


def keep_photos(root: Path, photos: str, kept: Path) -> None:
    """Copy the chosen photos with their masks into ``kept`` in the same layout: the pixel
    decoder trains on whole photos, and the train stage reads only fetch's outputs."""
    chosen, _ = find_photos(root, photos)
    for sample in chosen:
        pairs = [(sample.image, kept / "images" / sample.image.name)]
        pairs.append((sample.mask, kept / MASKS / sample.mask.name))
        if sample.planking is not None:
            pairs.append((sample.planking, kept / PLANKING / sample.planking.name))
        for source, target in pairs:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _fetch_masks(ctx: FetchContext, source: MasksSource) -> Brought:
    path = resolve_path(ctx.layout.root, source.path, f"{ctx.key}.path")
    masks = import_masks(path, ctx.work, ctx.limits)
    cut, left_out = cut_windows(masks.folder, source, ctx.target, ctx.seed, ctx.max_pixels, ctx.key)
    keep_photos(masks.folder, source.photos, ctx.kept)
    imported = Imported(masks.archive_sha256, masks.archive_md5, left_out)
    return Brought(imported, source.path, extra=asdict(cut), group_of=photo_of)


register_kind(SourceKind("masks", MasksSource, _fetch_masks, augmented=False))
