"""Scoring crack maps against pixel-level truth (``crackdet eval-maps DATA``).

DATA is a folder (read in place) or an archive (extracted into a temporary folder) laid out as
``images/<name>.<ext>``, ``masks/<name>.png`` (255 = crack pixel) and, optionally,
``masks_planking/<name>.png`` (255 = planking, the wood-grain pattern timber formwork leaves on
concrete, a classic false alarm). Every photo is mapped with
:func:`crackdet.maps.mapping.map_photo` (as ``crackdet predict`` maps it) and scored at window
level on the map's own tiles: a window is *crack* when it holds at least ``min_pixels`` crack
pixels, *clean* when it holds none and ignored otherwise (a few crack pixels at a window's edge
are neither a clear hit nor a clear miss). Clean windows with at least ``min_pixels`` planking
pixels also count as *planking* windows, whose flagged share is the planking false-positive
rate.

Where the model maps crack pixels (:attr:`crackdet.maps.mapping.PhotoMap.pixels`), each photo is
also scored pixel by pixel at the pixel threshold: tolerant crack-pixel counts
(:func:`crackdet.model.pixel_metrics.count_pixels`, 2 px, summed over photos before dividing),
planking pixels called crack, and the length of the cracks traced from the predicted mask (as
``crackdet predict`` measures them: :func:`crackdet.maps.cracks.traced_length`) against the
length of the true mask's skeleton (:func:`crackdet.maps.cracks.skeleton_length`). A model
without a pixel decoder has no pixel figures: they are absent, not zero, and the result says
why.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.params import PredictParams
from crackdet.core.progress import say
from crackdet.data.archive import extract
from crackdet.data.sources.labelled import ExtractLimits
from crackdet.data.sources.masks import MaskedPhoto, PixelCounts, PixelSums, find_photos, read_mask
from crackdet.data.windows import window_grid
from crackdet.maps.crack_outputs import pixel_threshold
from crackdet.maps.crackmap import Tile
from crackdet.maps.cracks import crack_mask, skeleton_length, traced_length
from crackdet.maps.mapping import (
    SEQUENTIAL,
    Executor,
    Mapper,
    PhotoMap,
    map_photo,
    prepare_mapper,
    run_photos,
)
from crackdet.model import pixel_metrics
from crackdet.model.calibrate import f1_optimal_threshold
from crackdet.model.ood import OODModel

MIN_PIXELS = 100
CRACK, CLEAN, IGNORED = 1, 0, -1
NO_LIMITS_GIVEN = ExtractLimits()  # the archive bounds when a caller names none
GRID_DIVISOR = 6.75  # scale auto's evaluation windows: the short side / this
# P(crack pixel) at or above this is crack where neither the caller nor the decoder chose one.
NO_PIXELS = "the model maps no crack pixels (it has no pixel decoder, decoder.pt beside model.pt)"
ACCEPTED_FIGURES = (
    "auroc",
    "precision",
    "recall",
    "planking_fpr",
    "windows_crack",
    "windows_clean",
)


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


@dataclass(frozen=True)
class PhotoPixels:
    """One photo's crack pixels scored against its masks: tolerant counts and skeleton lengths
    (pixels) of the predicted and the true crack mask."""

    photo: str
    counts: pixel_metrics.PixelCounts
    true_length: float
    predicted_length: float

    @property
    def length_error(self) -> float | None:
        """Relative; None where the photo has no true crack."""
        return pixel_metrics.length_error(self.predicted_length, self.true_length)

    def row(self) -> dict[str, Any]:
        """The per-photo table's row (undefined figures empty)."""
        c = self.counts
        return {
            "photo": self.photo,
            "precision": _round(c.precision),
            "recall": _round(c.recall),
            "f1": _round(c.f1),
            "planking_called": _round(c.planking_called_share),
            "true_length_px": round(self.true_length, 3),
            "predicted_length_px": round(self.predicted_length, 3),
            "length_error": _round(self.length_error),
            **dataclasses.asdict(c),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass
class MapsResult:
    """Window scores and labels of a whole data set, plus the metrics derived from them; the
    per-photo pixel scores where the model maps crack pixels (else empty)."""

    metrics: dict[str, Any]
    windows: list[ScoredWindow] = field(default_factory=list)
    photos: list[PhotoPixels] = field(default_factory=list)


def mask_length(mask: np.ndarray) -> float:
    """Skeleton length (pixels) of a boolean crack mask, as cracks are measured."""
    from skimage.morphology import skeletonize  # scikit-image: only where pixels are scored

    mask = np.asarray(mask, dtype=bool)
    return skeleton_length(skeletonize(mask)) if mask.any() else 0.0


def score_pixels(
    photo: str,
    predicted: np.ndarray,
    truth: np.ndarray,
    planking: np.ndarray | None = None,
    tolerance: float = pixel_metrics.TOLERANCE,
    measure: Callable[[np.ndarray], float] = mask_length,
) -> PhotoPixels:
    """One photo's predicted crack mask (bool HxW) scored against its truth and planking masks;
    its length by ``measure`` (the true mask's: its skeleton's length)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    counts = pixel_metrics.count_pixels(predicted, truth, planking, tolerance)
    return PhotoPixels(photo, counts, mask_length(truth), measure(predicted))


def pixel_figures(photos: list[PhotoPixels]) -> dict[str, Any]:
    """A data set's pixel figures: ratios of the counts summed over ``photos`` and the median
    per-photo length error (photos without a true crack have none). Undefined figures None."""
    total = sum((p.counts for p in photos), pixel_metrics.PixelCounts())
    errors = [p.length_error for p in photos if p.length_error is not None]
    return {
        "pixel_precision": total.precision,
        "pixel_recall": total.recall,
        "pixel_f1": total.f1,
        "pixel_planking_called": total.planking_called_share,
        "length_error_median": float(np.median(errors)) if errors else None,
        "pixels_predicted": total.predicted,
        "pixels_true": total.true,
        "pixels_planking": total.planking,
        "photos_with_pixels": len(photos),
    }


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


@dataclass(frozen=True)
class PhotoScores:
    """One photo's windows: truth labels, planking flags, scores and OOD flags; its pixel
    scores (None: the map has no crack pixels)."""

    labels: np.ndarray
    planking: np.ndarray
    scores: np.ndarray
    flags: np.ndarray
    windows: list[ScoredWindow]
    seconds: float  # mapping only
    pixels: PhotoPixels | None = None


def photo_pixels(
    name: str,
    mapped: PhotoMap,
    truth: np.ndarray,
    planking: np.ndarray | None,
    threshold: float,
    settings: PredictParams | None = None,
) -> PhotoPixels | None:
    """A mapped photo's crack pixels scored against its masks, called and measured as
    ``crackdet predict`` traces them under ``settings`` (:func:`crackdet.maps.cracks.crack_mask`
    at ``threshold`` and ``predict.pixel_hysteresis``; the length of the cracks traced with
    ``predict.crack_gap_px`` and ``predict.min_crack_length_px``), or with none of these (None:
    the threshold alone and the mask's whole skeleton); None where the map has no crack pixels."""
    if mapped.pixels is None:
        return None
    if settings is None:
        return score_pixels(name, crack_mask(mapped.pixels, threshold), truth, planking)
    called = crack_mask(mapped.pixels, threshold, settings.pixel_hysteresis)
    measure = partial(
        traced_length,
        min_length_px=settings.min_crack_length_px,
        gap_px=settings.crack_gap_px,
    )
    return score_pixels(name, called, truth, planking, measure=measure)


def resolve_pixel_threshold(mapper: Mapper, override: float | None) -> float:
    """The P(crack pixel) threshold pixels are scored at: ``override`` when given, else the one
    ``crackdet predict`` traces at (``predict.pixel_threshold``: a number, or the one the pixel
    decoder chose on val)."""
    if override is not None:
        return float(override)
    chosen = mapper.dense.pixel_threshold if mapper.dense is not None else None
    return pixel_threshold(mapper.settings.pixel_threshold, chosen)


def score_photo(
    mapper: Mapper, min_pixels: int, sample: MaskedPhoto, pixel_threshold: float | None = None
) -> PhotoScores:
    """Map one photo and score its windows against its masks: a numeric scale's own windows, or
    under ``scale: auto`` the :func:`evaluation_grid`; and its crack pixels, where the map has
    them, at ``pixel_threshold`` (see :func:`resolve_pixel_threshold`)."""
    photo = mapper.read(sample.image)
    shape = photo.shape[:2]
    # Masks are read before mapping so a bad one stops the run before minutes of inference.
    mask = read_mask(sample.mask, shape)
    planking_mask = read_mask(sample.planking, shape) if sample.planking else None
    mapped = map_photo(mapper, photo)
    result = mapped.result
    threshold = resolve_pixel_threshold(mapper, pixel_threshold)
    pixels = photo_pixels(
        sample.image.name,
        mapped,
        mask,
        planking_mask,
        threshold,
        mapper.settings,
    )
    tiles = (
        evaluation_grid(result.heatmap, result.ood_map)
        if mapper.settings.scale == "auto"
        else result.tiles
    )
    labels = window_labels(mask, tiles, min_pixels)
    planking = planking_windows(labels, planking_mask, tiles, min_pixels)
    names = {CRACK: "crack", CLEAN: "clean", IGNORED: "ignored"}
    windows = [
        ScoredWindow(
            sample.image.name, t.x, t.y, t.size, t.p, names[int(label)], bool(plank), t.ood
        )
        for t, label, plank in zip(tiles, labels, planking, strict=True)
    ]
    return PhotoScores(
        labels,
        planking,
        np.array([t.p for t in tiles]),
        np.array([bool(t.ood) for t in tiles]),
        windows,
        result.seconds,
        pixels,
    )


def evaluate_maps(
    data: Path,
    model: Any,
    settings: PredictParams,
    *,
    photos: str = "*",
    limits: ExtractLimits = NO_LIMITS_GIVEN,
    graph_cache: Path | None = None,
    ood: OODModel | None = None,
    progress: bool = False,
    min_pixels: int = MIN_PIXELS,
    executor: Executor = SEQUENTIAL,
    pixel_threshold: float | None = None,
    checkpoint: Path | None = None,
) -> MapsResult:
    """Map every photo of ``data`` (folder or archive) with ``model`` at ``settings`` (the
    operating threshold as :func:`crackdet.maps.mapping.prepare_mapper` chooses it) and score
    its windows (:func:`score_photo`). ``photos``: a file-name glob; ``graph_cache``: exported
    graphs for the graph engines; ``ood``: the model's OOD model (then the figures on accepted
    windows are reported too); ``min_pixels``: crack pixels that make a crack window;
    ``pixel_threshold``: P(crack pixel) that makes a crack pixel (None: the decoder's own);
    ``checkpoint``: the model's folder, whose dense heads map in one pass where it has them."""
    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    mapper = prepare_mapper(model, settings, ood, graph_cache, checkpoint)
    scored: list[PhotoScores] = []
    with readable_folder(data, limits) as folder:
        start = time.perf_counter()  # extraction is not counted
        samples, left_out = find_photos(folder, photos, "--photos")
        work = partial(score_photo, mapper, min_pixels, pixel_threshold=pixel_threshold)
        for sample, photo in zip(
            samples, run_photos(work, samples, executor, "eval-maps"), strict=True
        ):
            scored.append(photo)
            if progress:
                crack = int((photo.labels == CRACK).sum())
                say(
                    f"eval-maps: {sample.image.name}: {len(photo.windows)} windows "
                    f"({crack} crack) in {photo.seconds:.1f} s"
                )
    labels = np.concatenate([s.labels for s in scored])
    planking = np.concatenate([s.planking for s in scored])
    scores = np.concatenate([s.scores for s in scored])
    flags = np.concatenate([s.flags for s in scored])
    threshold = mapper.threshold
    metrics = score_windows(labels, planking, scores, threshold)
    if ood is not None:  # risk and coverage: what the maps flag, and the figures on the rest
        accepted = score_windows(labels[~flags], planking[~flags], scores[~flags], threshold)
        metrics["ood_share"] = float(flags.mean()) if len(flags) else 0.0
        metrics.update({f"accepted_{k}": accepted[k] for k in ACCEPTED_FIGURES})
    metrics.update(
        {
            "photos": len(samples),
            "photos_pattern": photos,
            "photos_with_planking_mask": sum(s.planking is not None for s in samples),
            "left_out": left_out,
            "scale": settings.scale,
            "overlap": settings.overlap,
            "min_pixels": min_pixels,
            "map_seconds": round(sum(s.seconds for s in scored), 3),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    photo_pixels = [s.pixels for s in scored if s.pixels is not None]
    without = [s.image.name for s, p in zip(samples, scored, strict=True) if p.pixels is None]
    threshold = resolve_pixel_threshold(mapper, pixel_threshold)
    metrics.update(pixel_section(photo_pixels, without, threshold))
    return MapsResult(metrics, [w for s in scored for w in s.windows], photo_pixels)


def pixel_section(
    photos: list[PhotoPixels], without: list[str], threshold: float
) -> dict[str, Any]:
    """The pixel entries of the metrics: figures and per-photo rows of the ``photos`` scored at
    ``threshold``, the photos mapped ``without`` pixels beside them (named), or, where no photo
    has pixels, only why (``pixels_absent``)."""
    if not photos:
        return {"pixels_absent": NO_PIXELS}
    return {
        **pixel_figures(photos),
        "pixel_threshold": threshold,
        "pixel_tolerance": pixel_metrics.TOLERANCE,
        "photos_without_pixels": without,
        "pixel_photos": [p.row() for p in photos],
    }


def windows_csv(windows: list[ScoredWindow]) -> str:
    """The per-window table (photo, x, y, size, p, label, planking) as CSV text."""
    buffer = io.StringIO()
    fields = [f.name for f in dataclasses.fields(ScoredWindow)]
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataclasses.asdict(w) for w in windows)
    return buffer.getvalue()


def photos_csv(photos: list[PhotoPixels]) -> str:
    """The per-photo pixel table (figures, lengths, counts) as CSV text."""
    buffer = io.StringIO()
    rows = [p.row() for p in photos]
    fields = list(rows[0]) if rows else ["photo"]
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
