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
import io
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.data.archive import extract
from crackdet.data.sources.labelled import ExtractLimits
from crackdet.data.sources.masks import PixelCounts, PixelSums, find_photos, read_mask
from crackdet.data.windows import window_grid
from crackdet.maps.crackmap import Tile, crack_map, scales_for
from crackdet.maps.photos import read_photo
from crackdet.model.calibrate import f1_optimal_threshold
from crackdet.model.engines import classifier_features
from crackdet.model.ood import OODModel

MIN_PIXELS = 100
CRACK, CLEAN, IGNORED = 1, 0, -1
NO_LIMITS_GIVEN = ExtractLimits()  # the archive bounds when a caller names none
GRID_DIVISOR = 6.75  # scale auto's evaluation windows: the short side / this
ACCEPTED_FIGURES = (
    "auroc",
    "precision",
    "recall",
    "planking_fpr",
    "windows_crack",
    "windows_clean",
)


@dataclass(frozen=True)
class MapSettings:
    """How the photos are mapped and scored (``predict.*`` unless a command overrides them)."""

    scale: float | str  # a number, or auto (several scales from the photo's size)
    auto_windows: tuple[float, ...]
    overlap: float
    batch_size: int
    threshold: float
    engine: str
    max_pixels: int
    min_pixels: int = MIN_PIXELS


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
    ood: bool | None  # unlike the training data (None: no OOD model)


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


def window_counts(mask: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    """Set pixels of ``mask`` inside each tile's square, clipped to the image (rescaled or
    padded tiles can overhang it)."""
    pixels = PixelCounts(mask)
    return np.array(
        [pixels.box(t.y, t.x, t.y + t.size, t.x + t.size) for t in tiles], dtype=np.int64
    )


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


def evaluation_grid(heatmap: np.ndarray, ood_map: np.ndarray | None) -> list[Tile]:
    """The windows ``scale: auto`` maps are scored on, whatever scales they combine: squares of
    the photo's short side divided by :data:`GRID_DIVISOR` (76 px on a 512-px photo, the
    windows of a scale-3 map), 50 % overlap, edge-flush; each scored by the mean of the map
    inside it, and unfamiliar when most of it is."""
    height, width = heatmap.shape
    side = max(1, round(min(height, width) / GRID_DIVISOR))
    values = PixelSums(heatmap)
    flags = PixelSums(ood_map) if ood_map is not None else None
    tiles = []
    for y, x in window_grid(height, width, side, 0.5):
        area = min(side, height - y) * min(side, width - x)
        p = values.box(y, x, y + side, x + side) / area
        ood = None if flags is None else bool(flags.box(y, x, y + side, x + side) / area >= 0.5)
        tiles.append(Tile(x, y, side, round(float(p), 6), ood=ood))
    return tiles


def evaluate_maps(
    data: Path,
    model: Any,
    settings: MapSettings,
    *,
    photos: str = "*",
    limits: ExtractLimits = NO_LIMITS_GIVEN,
    graph_cache: Path | None = None,
    ood: OODModel | None = None,
    progress: bool = False,
) -> MapsResult:
    """Map every photo of ``data`` (folder or archive) with ``model`` and score its windows: a
    numeric scale's own windows, or under ``scale: auto`` the :func:`evaluation_grid`.
    ``photos``: a file-name glob; ``graph_cache``: exported graphs for the graph engines;
    ``ood``: the model's OOD model (then the figures on accepted windows are reported too)."""
    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    features_fn = classifier_features(model, settings.engine, graph_cache)
    patch = model.spec.patch_size
    all_labels, all_planking, all_scores, all_flags = [], [], [], []
    windows: list[ScoredWindow] = []
    map_seconds = 0.0
    names = {CRACK: "crack", CLEAN: "clean", IGNORED: "ignored"}

    def largest_scale(height: int, width: int) -> float:
        return max(scales_for(settings.scale, settings.auto_windows, height, width, patch))

    with readable_folder(data, limits) as folder:
        start = time.perf_counter()  # extraction is not counted
        samples, _ = find_photos(folder, photos, "--photos")
        for sample in samples:
            photo = read_photo(sample.image, settings.max_pixels, largest_scale)
            shape = photo.shape[:2]
            # Masks are read before mapping so a bad one stops the run before minutes of inference.
            mask = read_mask(sample.mask, shape)
            planking_mask = read_mask(sample.planking, shape) if sample.planking else None
            scales = scales_for(settings.scale, settings.auto_windows, *shape, patch)
            result = crack_map(
                model, photo, settings.overlap, settings.batch_size, scales, ood, features_fn
            )
            map_seconds += result.seconds
            tiles = (
                evaluation_grid(result.heatmap, result.ood_map)
                if settings.scale == "auto"
                else result.tiles
            )
            labels = window_labels(mask, tiles, settings.min_pixels)
            planking = planking_windows(labels, planking_mask, tiles, settings.min_pixels)
            all_labels.append(labels)
            all_planking.append(planking)
            all_scores.append(np.array([t.p for t in tiles]))
            all_flags.append(np.array([bool(t.ood) for t in tiles]))
            windows.extend(
                ScoredWindow(
                    sample.image.name,
                    t.x,
                    t.y,
                    t.size,
                    t.p,
                    names[int(label)],
                    bool(plank),
                    t.ood,
                )
                for t, label, plank in zip(tiles, labels, planking, strict=True)
            )
            if progress:
                print(
                    f"eval-maps: {sample.image.name}: {len(tiles)} windows "
                    f"({int((labels == CRACK).sum())} crack) in {result.seconds:.1f} s"
                )
    labels, planking = np.concatenate(all_labels), np.concatenate(all_planking)
    scores, flags = np.concatenate(all_scores), np.concatenate(all_flags)
    metrics = score_windows(labels, planking, scores, settings.threshold)
    if ood is not None:  # risk and coverage: what the maps flag, and the figures on the rest
        accepted = score_windows(
            labels[~flags], planking[~flags], scores[~flags], settings.threshold
        )
        metrics["ood_share"] = float(flags.mean()) if len(flags) else 0.0
        metrics.update({f"accepted_{k}": accepted[k] for k in ACCEPTED_FIGURES})
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
