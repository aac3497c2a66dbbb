"""Scoring crack maps against pixel-level truth (``crackdet eval-maps DATA``).

DATA is a folder (read in place) or an archive (extracted into a temporary folder) laid out as
``images/<name>.<ext>``, ``masks/<name>.png`` (255 = crack pixel) and, optionally,
``masks_planking/<name>.png`` (255 = planking, the wood-grain pattern timber formwork leaves on
concrete, a classic false alarm). Every photo is mapped with
:func:`crackdet.maps.crackmap.crack_map` and scored at window level on the map's own tiles: a
window is *crack* when it holds at least ``min_pixels`` crack pixels, *clean* when it holds none
and ignored otherwise (a few crack pixels at a window's edge are neither a clear hit nor a clear
miss). Clean windows with at least
``min_pixels`` planking pixels also count as *planking* windows, whose flagged share is the
planking false-positive rate.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fnmatch
import io
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crackdet.core.errors import CrackdetError, first_line
from crackdet.data.archive import extract
from crackdet.data.images import IMAGE_SUFFIXES, is_image_file
from crackdet.maps.crackmap import Tile, crack_map
from crackdet.maps.photos import read_photo
from crackdet.model.calibrate import f1_optimal_threshold
from crackdet.model.engines import classifier_features

MIN_PIXELS = 100
CRACK, CLEAN, IGNORED = 1, 0, -1
MASKS, PLANKING = "masks", "masks_planking"


@dataclass(frozen=True)
class MapsSample:
    """One photo of the data set with its truth masks."""

    name: str
    image: Path
    mask: Path
    planking: Path | None


@dataclass(frozen=True)
class MapSettings:
    """How the photos are mapped and scored (``predict.*`` unless a command overrides them)."""

    scale: float
    overlap: float
    batch_size: int
    threshold: float
    engine: str
    max_pixels: int
    min_pixels: int = MIN_PIXELS


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what an archive may unpack (``fetch.max_files``, ``fetch.max_bytes``)."""

    max_files: int = 100_000
    max_bytes: int = 4 * 1024**3


@dataclass(frozen=True)
class ScoredWindow:
    """One window of one photo, its crack probability and its truth label."""

    photo: str
    x: int
    y: int
    size: int
    p: float
    label: str  # crack, clean or ignored
    planking: bool


@dataclass
class MapsResult:
    """Window scores and labels of a whole data set, plus the metrics derived from them."""

    metrics: dict[str, Any]
    windows: list[ScoredWindow] = field(default_factory=list)


@contextlib.contextmanager
def readable_folder(data: Path, limits: ExtractLimits) -> Iterator[Path]:
    """A folder is read in place; an archive is extracted to a temporary folder."""
    if data.is_dir():
        yield data
        return
    with tempfile.TemporaryDirectory(prefix="crackdet-maps-") as tmp:
        folder = Path(tmp) / "data"
        extract(data, folder, max_files=limits.max_files, max_bytes=limits.max_bytes)
        yield folder


def find_samples(root: Path, photos: str = "*") -> list[MapsSample]:
    """Pair every ``images/<name>.<ext>`` whose file name matches the glob ``photos`` with
    ``masks/<name>.png`` (and the planking mask)."""
    base = _layout_root(root)
    images = sorted(p for p in (base / "images").iterdir() if is_image_file(p))
    if not images:
        raise CrackdetError(f"{base / 'images'}: no photos ({', '.join(IMAGE_SUFFIXES)})")
    images = [p for p in images if fnmatch.fnmatchcase(p.name, photos)]
    if not images:
        raise CrackdetError(f"--photos {photos!r}: matches none of the photos in {base / 'images'}")
    samples = []
    for image in images:
        mask = base / MASKS / f"{image.stem}.png"
        if not mask.is_file():
            raise CrackdetError(f"{image}: no crack mask {mask}; every photo needs one")
        planking = base / PLANKING / f"{image.stem}.png"
        samples.append(
            MapsSample(image.stem, image, mask, planking if planking.is_file() else None)
        )
    return samples


def _layout_root(root: Path) -> Path:
    """``root`` itself, or its only subfolder when an archive wraps everything in one folder."""
    if (root / "images").is_dir():
        return root
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(children) == 1 and (children[0] / "images").is_dir():
        return children[0]
    raise CrackdetError(
        f"{root}: no images/ folder (expected images/<name>.<ext> and masks/<name>.png)"
    )


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A truth mask as a bool HxW array (pixels >= 128 are set), checked against ``shape``."""
    try:
        with Image.open(path) as image:
            image.load()
            gray = np.asarray(image.convert("L"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise CrackdetError(f"{path}: not a readable mask image ({first_line(exc)})") from None
    if gray.shape != shape:
        raise CrackdetError(
            f"{path}: mask is {gray.shape[1]}x{gray.shape[0]} but its photo is "
            f"{shape[1]}x{shape[0]}; masks must match their photo pixel for pixel"
        )
    # 8-bit masks are 0/255; a threshold (not == 255) tolerates resampled or lossy masks.
    return gray >= 128


def window_counts(mask: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    """Set pixels of ``mask`` inside each tile's square (clipped to the image), via an integral
    image so thousands of windows cost one cumulative sum."""
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    counts = np.empty(len(tiles), dtype=np.int64)
    for k, tile in enumerate(tiles):
        # Rescaled (scale != 1) or padded (photo smaller than a window) tiles can overhang.
        x0, y0 = min(max(tile.x, 0), width), min(max(tile.y, 0), height)
        x1, y1 = min(x0 + tile.size, width), min(y0 + tile.size, height)
        counts[k] = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts


def window_labels(mask: np.ndarray, tiles: list[Tile], min_pixels: int = MIN_PIXELS) -> np.ndarray:
    """Per tile: CRACK (>= ``min_pixels`` crack pixels), CLEAN (none) or IGNORED (in between)."""
    counts = window_counts(mask, tiles)
    labels = np.full(len(tiles), IGNORED, dtype=np.int8)
    labels[counts >= min_pixels] = CRACK
    labels[counts == 0] = CLEAN
    return labels


def planking_windows(
    labels: np.ndarray,
    planking: np.ndarray | None,
    tiles: list[Tile],
    min_pixels: int = MIN_PIXELS,
) -> np.ndarray:
    """Clean windows holding at least ``min_pixels`` planking pixels."""
    if planking is None:
        return np.zeros(len(tiles), dtype=bool)
    return (labels == CLEAN) & (window_counts(planking, tiles) >= min_pixels)


def score_windows(
    labels: np.ndarray, planking: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Window ROC AUC, precision/recall at ``threshold`` and the planking false-positive rate.
    Undefined figures (one class only, no flagged or planking windows) are None."""
    from sklearn.metrics import roc_auc_score  # scikit-learn: ~0.9 s to import, scoring only

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    planking = np.asarray(planking, dtype=bool)
    scored = labels != IGNORED
    truth, p = labels[scored] == CRACK, scores[scored]
    flagged = p >= threshold
    tp = int(np.sum(flagged & truth))
    fp = int(np.sum(flagged & ~truth))
    fn = int(np.sum(~flagged & truth))
    both = 0 < truth.sum() < len(truth)
    planking_flagged = int(np.sum(scores[planking] >= threshold))
    n_planking = int(planking.sum())
    return {
        "auroc": float(roc_auc_score(truth, p)) if both else None,
        # What these windows would choose as operating threshold (robust F1-optimal, as train
        # chooses on val): pick it on one part of a set, then score another part with it.
        "f1_threshold": f1_optimal_threshold(p, truth.astype(int)) if both else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "planking_fpr": planking_flagged / n_planking if n_planking else None,
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": int(np.sum(~flagged & ~truth)),
        "windows_crack": int(truth.sum()),
        "windows_clean": int((~truth).sum()),
        "windows_ignored": int((~scored).sum()),
        "windows_planking": n_planking,
        "planking_flagged": planking_flagged,
    }


def evaluate_maps(
    data: Path,
    model: Any,
    settings: MapSettings,
    *,
    photos: str = "*",
    limits: ExtractLimits = ExtractLimits(),
    graph_cache: Path | None = None,
    progress: bool = False,
) -> MapsResult:
    """Map every photo of ``data`` (folder or archive) with ``model`` and score its windows.
    ``photos``: a file-name glob; ``graph_cache``: exported graphs for the graph engines."""
    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    features_fn = classifier_features(model, settings.engine, graph_cache)
    all_labels, all_planking, all_scores = [], [], []
    windows: list[ScoredWindow] = []
    map_seconds = 0.0
    names = {CRACK: "crack", CLEAN: "clean", IGNORED: "ignored"}
    with readable_folder(data, limits) as folder:
        start = time.perf_counter()  # extraction is not counted
        samples = find_samples(folder, photos)
        for sample in samples:
            photo = read_photo(sample.image, settings.max_pixels)
            shape = photo.shape[:2]
            # Masks are read before mapping so a bad one stops the run before minutes of inference.
            mask = read_mask(sample.mask, shape)
            planking_mask = read_mask(sample.planking, shape) if sample.planking else None
            result = crack_map(
                model,
                photo,
                settings.overlap,
                settings.batch_size,
                settings.scale,
                extract=features_fn,
            )
            map_seconds += result.seconds
            labels = window_labels(mask, result.tiles, settings.min_pixels)
            planking = planking_windows(labels, planking_mask, result.tiles, settings.min_pixels)
            all_labels.append(labels)
            all_planking.append(planking)
            all_scores.append(np.array([t.p for t in result.tiles]))
            windows.extend(
                ScoredWindow(
                    sample.image.name, t.x, t.y, t.size, t.p, names[int(label)], bool(plank)
                )
                for t, label, plank in zip(result.tiles, labels, planking, strict=True)
            )
            if progress:
                print(
                    f"eval-maps: {sample.image.name}: {len(result.tiles)} windows "
                    f"({int((labels == CRACK).sum())} crack) in {result.seconds:.1f} s"
                )
    metrics = score_windows(
        np.concatenate(all_labels),
        np.concatenate(all_planking),
        np.concatenate(all_scores),
        settings.threshold,
    )
    metrics.update(
        {
            "photos": len(samples),
            "photos_pattern": photos,
            "photos_with_planking_mask": sum(s.planking is not None for s in samples),
            "scale": settings.scale,
            "overlap": settings.overlap,
            "min_pixels": settings.min_pixels,
            "map_seconds": round(map_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    return MapsResult(metrics, windows)


def windows_csv(windows: list[ScoredWindow]) -> str:
    """The per-window table (photo, x, y, size, p, label, planking) as CSV text."""
    buffer = io.StringIO()
    fields = [f.name for f in dataclasses.fields(ScoredWindow)]
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataclasses.asdict(w) for w in windows)
    return buffer.getvalue()
