"""``crackdet eval-maps DATA``: score a model's crack maps against pixel-level truth.

DATA is a folder (read in place) or an archive (extracted into a temporary folder) laid out as
``images/<name>.<ext>``, ``masks/<name>.png`` (255 = crack pixel) and, optionally,
``masks_planking/<name>.png`` (255 = planking, the wood-grain pattern timber formwork leaves on
concrete, a classic false alarm). Every photo is mapped with :func:`crackdet.predict.crack_map`
and scored at window level on the map's own tiles: a window is *crack* when it holds at least
``min_pixels`` crack pixels, *clean* when it holds none and ignored otherwise (a few crack pixels
at a window's edge are neither a clear hit nor a clear miss). Clean windows with at least
``min_pixels`` planking pixels also count as *planking* windows, whose flagged share is the
planking false-positive rate.
"""

from __future__ import annotations

import contextlib
import csv
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

from crackdet.engine import classifier_features, effective_engine, engine_label
from crackdet.errors import CrackdetError, first_line
from crackdet.predict import PHOTO_SUFFIXES, crack_map, read_photo

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


@dataclass
class MapsResult:
    """Window scores and labels of a whole data set, plus the metrics derived from them."""

    metrics: dict[str, Any]
    windows: list[dict[str, Any]] = field(default_factory=list)  # one row per scored window


@contextlib.contextmanager
def _readable_folder(data: Path, max_files: int, max_bytes: int) -> Iterator[Path]:
    """A folder is read in place; an archive is extracted to a temporary folder."""
    if data.is_dir():
        yield data
        return
    from crackdet.archive import extract

    with tempfile.TemporaryDirectory(prefix="crackdet-maps-") as tmp:
        folder = Path(tmp) / "data"
        extract(data, folder, max_files=max_files, max_bytes=max_bytes)
        yield folder


def find_samples(root: Path, photos: str = "*") -> list[MapsSample]:
    """Pair every ``images/<name>.<ext>`` whose file name matches the glob ``photos`` with
    ``masks/<name>.png`` (and the planking mask)."""
    base = _layout_root(root)
    images = sorted(
        p
        for p in (base / "images").iterdir()
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise CrackdetError(f"{base / 'images'}: no photos ({', '.join(PHOTO_SUFFIXES)})")
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


def window_counts(mask: np.ndarray, tiles: list[dict[str, Any]]) -> np.ndarray:
    """Set pixels of ``mask`` inside each tile's square (clipped to the image), via an integral
    image so thousands of windows cost one cumulative sum."""
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    counts = np.empty(len(tiles), dtype=np.int64)
    for k, tile in enumerate(tiles):
        # Rescaled (scale != 1) or padded (photo smaller than a window) tiles can overhang.
        x0, y0 = min(max(int(tile["x"]), 0), width), min(max(int(tile["y"]), 0), height)
        x1, y1 = min(x0 + int(tile["size"]), width), min(y0 + int(tile["size"]), height)
        counts[k] = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts


def window_labels(
    mask: np.ndarray, tiles: list[dict[str, Any]], min_pixels: int = MIN_PIXELS
) -> np.ndarray:
    """Per tile: CRACK (>= ``min_pixels`` crack pixels), CLEAN (none) or IGNORED (in between)."""
    counts = window_counts(mask, tiles)
    labels = np.full(len(tiles), IGNORED, dtype=np.int8)
    labels[counts >= min_pixels] = CRACK
    labels[counts == 0] = CLEAN
    return labels


def planking_windows(
    labels: np.ndarray,
    planking: np.ndarray | None,
    tiles: list[dict[str, Any]],
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
    from sklearn.metrics import roc_auc_score

    from crackdet.calibrate import f1_optimal_threshold

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
    *,
    scale: float,
    overlap: float,
    batch_size: int,
    threshold: float,
    max_pixels: int,
    min_pixels: int = MIN_PIXELS,
    max_files: int = 100_000,
    max_bytes: int = 4 * 1024**3,
    progress: bool = False,
    engine: str = "torch",
    photos: str = "*",
    onnx_cache: Path | None = None,
) -> MapsResult:
    """Map every photo of ``data`` (folder or archive) with ``model`` and score its windows."""
    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    features_fn = classifier_features(model, engine, onnx_cache)
    all_labels, all_planking, all_scores, windows = [], [], [], []
    map_seconds = 0.0
    with _readable_folder(data, max_files, max_bytes) as folder:
        start = time.perf_counter()  # extraction is not counted
        samples = find_samples(folder, photos)
        for sample in samples:
            photo = read_photo(sample.image, max_pixels)
            shape = photo.shape[:2]
            # Masks are read before mapping so a bad one stops the run before minutes of inference.
            mask = read_mask(sample.mask, shape)
            planking_mask = read_mask(sample.planking, shape) if sample.planking else None
            result = crack_map(model, photo, overlap, batch_size, scale, extract=features_fn)
            map_seconds += result.seconds
            labels = window_labels(mask, result.tiles, min_pixels)
            planking = planking_windows(labels, planking_mask, result.tiles, min_pixels)
            scores = np.array([float(t["p"]) for t in result.tiles])
            all_labels.append(labels)
            all_planking.append(planking)
            all_scores.append(scores)
            names = {CRACK: "crack", CLEAN: "clean", IGNORED: "ignored"}
            windows.extend(
                {
                    "photo": sample.image.name,
                    **{key: tile[key] for key in ("x", "y", "size", "p")},
                    "label": names[int(label)],
                    "planking": bool(plank),
                }
                for tile, label, plank in zip(result.tiles, labels, planking, strict=True)
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
        threshold,
    )
    metrics.update(
        {
            "photos": len(samples),
            "photos_pattern": photos,
            "photos_with_planking_mask": sum(s.planking is not None for s in samples),
            "scale": scale,
            "overlap": overlap,
            "min_pixels": min_pixels,
            "map_seconds": round(map_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    return MapsResult(metrics, windows)


def windows_csv(windows: list[dict[str, Any]]) -> str:
    """The per-window table (photo, x, y, size, p, label, planking) as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, ["photo", "x", "y", "size", "p", "label", "planking"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(windows)
    return buffer.getvalue()


def operating_threshold(model: Any, use_model_threshold: bool, default: float) -> float:
    """The threshold chosen on val and stored with a checkpoint, else ``predict.threshold``
    (registry models carry no threshold)."""
    if use_model_threshold:
        value = getattr(getattr(model, "spec", None), "threshold", None)
        if value is not None:
            return float(value)
    return default


def run_eval_maps(
    data: Path,
    model_ref: str,
    params: Any,
    root: Path,
    *,
    scale: float | None = None,
    overlap: float | None = None,
    threshold: float | None = None,
    out: Path | None = None,
    progress: bool = False,
    photos: str = "*",
) -> dict[str, Any]:
    """Load ``model_ref``, score its maps on ``data``, log an MLflow run; return the metrics.
    ``scale``/``overlap``/``threshold`` default to params.yaml ``predict.*`` (threshold: the
    model's own when ``predict.use_model_threshold``)."""
    import mlflow

    from crackdet.features import onnx_root
    from crackdet.io import write_json
    from crackdet.models import load_model
    from crackdet.tracking import git_state, init_store

    predict = params.predict
    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    # Same ranges as params.yaml predict.scale / predict.overlap.
    if scale is not None and not 0.0 < scale <= 8.0:
        raise CrackdetError(f"--scale {scale}: out of range (above 0, at most 8)")
    if overlap is not None and not 0.0 <= overlap <= 0.9:
        raise CrackdetError(f"--overlap {overlap}: out of range (0 to 0.9)")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CrackdetError(f"--threshold {threshold}: out of range (0 to 1)")
    model = load_model(model_ref, root)
    if threshold is None:
        threshold = operating_threshold(model, predict.use_model_threshold, predict.threshold)
    result = evaluate_maps(
        data,
        model,
        scale=predict.scale if scale is None else scale,
        overlap=predict.overlap if overlap is None else overlap,
        batch_size=predict.batch_size,
        threshold=threshold,
        max_pixels=predict.max_pixels,
        max_files=params.fetch.max_files,
        max_bytes=params.fetch.max_bytes,
        progress=progress,
        engine=predict.engine,
        photos=photos,
        onnx_cache=onnx_root(root),
    )
    metrics = {"data": str(data), "model": model_ref, **result.metrics}
    tags = {"eval.data": data.name, "eval.model": model_ref, **git_state(root)}
    if data.is_file():
        from crackdet.archive import sha256_file

        tags["data.archive_sha256"] = sha256_file(data)
    init_store(root)
    with mlflow.start_run(
        run_name=f"eval-maps {data.name}", tags={"crackdet.stage": "eval-maps"}
    ) as run:
        mlflow.set_tags(tags)
        mlflow.log_params(
            {
                "scale": metrics["scale"],
                "overlap": metrics["overlap"],
                "threshold": metrics["threshold"],
                "min_pixels": metrics["min_pixels"],
                "photos": photos,
                "engine": engine_label(effective_engine(model, predict.engine)),
            }
        )
        mlflow.log_metrics(
            {
                f"maps_{key}": float(metrics[key])
                for key in ("auroc", "precision", "recall", "planking_fpr", "f1_threshold")
                if metrics[key] is not None  # undefined figures are left out, not logged as 0
            }
            | {
                f"maps_{key}": float(metrics[key])
                for key in (
                    "windows_crack",
                    "windows_clean",
                    "windows_ignored",
                    "windows_planking",
                    "photos",
                    "seconds",
                )
            }
        )
        mlflow.log_dict(metrics, "eval-maps/metrics.json")
        mlflow.log_text(windows_csv(result.windows), "eval-maps/windows.csv")
        metrics["run_id"] = run.info.run_id
    if out is not None:
        write_json(out, metrics)
    return metrics


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for the terminal."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"eval-maps {Path(str(metrics.get('data', ''))).name}: auroc {fmt(metrics['auroc'])} "
        f"precision {fmt(metrics['precision'])} recall {fmt(metrics['recall'])} "
        f"@ {metrics['threshold']:.3f}, planking fpr {fmt(metrics['planking_fpr'])} "
        f"({metrics['planking_flagged']}/{metrics['windows_planking']}); windows "
        f"{metrics['windows_crack']} crack / {metrics['windows_clean']} clean / "
        f"{metrics['windows_ignored']} ignored on {metrics['photos']} photos "
        f"(scale {metrics['scale']}, overlap {metrics['overlap']}) in {metrics['seconds']:.1f} s; "
        f"F1-optimal threshold on these windows {fmt(metrics.get('f1_threshold'))}"
    )
