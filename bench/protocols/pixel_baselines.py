"""What crack pixels are worth without a pixel decoder: the baselines a decoder is compared with.

On UAV75 (pixel masks; ``val_*`` scored, any threshold chosen on ``train_*`` only), with the
scorer ``crackdet eval-maps`` uses (:func:`crackdet.maps.scoring.score_pixels`: 2-px tolerant
counts summed over photos, planking pixels called crack, median per-photo skeleton length
error), rows for:

- **today's product**, the window map of ``--model`` at params.yaml's predict settings
  (``scale: auto``) and the model's operating threshold, as crack pixels two ways: the mask
  ``crackdet predict`` writes (the averaged heatmap >= threshold) and every pixel of a flagged
  window (union of windows with p >= threshold). A 227-px window is not a crack: its precision
  is poor by construction;
- **a classical ridge filter**, scikit-image's ``sato`` and ``frangi`` (dark ridges, sigmas 1
  and 2 px, on the grey photo) with three thresholds: one global level and one per-photo
  quantile, each chosen for pixel F1 on ``train_*``, and Otsu's per photo (nothing chosen).

:func:`probability_row` scores any P(crack pixel) function (an RGB photo → float HxW) the same
way, at a given threshold or at the one that maximises F1 on ``train_*``: the pixel decoder's
row, once it exists.

    python bench/protocols/pixel_baselines.py [--data ../shared/data/uav75/uav75-trainval.zip]
        [--model outputs/train] [--no-windows]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crackdet.core.layout import Layout
from crackdet.core.overrides import params_or_defaults, predict_settings
from crackdet.data.sources.labelled import ExtractLimits
from crackdet.data.sources.masks import find_photos, read_mask
from crackdet.maps.mapping import map_photo, prepare_mapper
from crackdet.maps.scoring import pixel_figures, readable_folder, score_pixels
from crackdet.model.pixel_metrics import PixelCounts, count_pixels

REPO = Path(__file__).resolve().parents[2]
SIGMAS = (1.0, 2.0)  # px: UAV75's cracks are 1-6 px wide at the photos' own size
QUANTILES = (0.80, 0.85, 0.90, 0.93, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)
PROBABILITIES = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))

ScoreFn = Callable[[np.ndarray], np.ndarray]  # RGB uint8 HxWx3 -> float HxW, higher = crack


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # RGB uint8
    truth: np.ndarray  # bool: crack
    planking: np.ndarray | None  # bool: planking, where the set has a planking mask


def read_photos(folder: Path, pattern: str) -> list[Photo]:
    samples, _ = find_photos(folder, pattern, "--photos")
    photos = []
    for sample in samples:
        image = np.asarray(Image.open(sample.image).convert("RGB"))
        shape = image.shape[:2]
        planking = read_mask(sample.planking, shape) if sample.planking else None
        photos.append(Photo(sample.image.name, image, read_mask(sample.mask, shape), planking))
    return photos


def row(name: str, threshold: str, photos: list[Photo], masks: list[np.ndarray]) -> dict:
    """The figures of predicted crack masks ``masks`` (one per photo) against ``photos``."""
    scored = [
        score_pixels(p.name, m, p.truth, p.planking) for p, m in zip(photos, masks, strict=True)
    ]
    figures = pixel_figures(scored)
    return {"method": name, "threshold": threshold, **figures}


def _f1(photos: list[Photo], masks: list[np.ndarray]) -> float:
    """Pooled 2-px F1 (counts only: the threshold sweeps need no skeletons)."""
    total = sum(
        (count_pixels(m, p.truth, p.planking) for p, m in zip(photos, masks, strict=True)),
        PixelCounts(),
    )
    return total.f1 or 0.0


def choose(
    train: list[Photo], scores: list[np.ndarray], candidates: tuple[float, ...], rule: str
) -> tuple[float, float]:
    """The candidate with the best pooled F1 on ``train`` and that F1; ``rule`` "level": the
    candidate is a level of the score, "quantile": a per-photo quantile of it."""
    best = (candidates[0], -1.0)
    for c in candidates:
        masks = [s >= (np.quantile(s, c) if rule == "quantile" else c) for s in scores]
        f1 = _f1(train, masks)
        if f1 > best[1]:
            best = (c, f1)
    return best


def ridge_rows(name: str, score: ScoreFn, train: list[Photo], val: list[Photo]) -> list[dict]:
    """A ridge filter with a global level and a per-photo quantile chosen on ``train``, and
    Otsu's threshold per photo."""
    from skimage.filters import threshold_otsu

    train_scores = [score(p.image) for p in train]
    val_scores = [score(p.image) for p in val]
    pooled = np.concatenate([s.ravel() for s in train_scores])
    levels = tuple(float(np.quantile(pooled, q)) for q in QUANTILES)
    level, level_f1 = choose(train, train_scores, levels, "level")
    q, q_f1 = choose(train, train_scores, QUANTILES, "quantile")
    return [
        row(
            name,
            f"level {level:.4g} (train F1 {level_f1:.3f})",
            val,
            [s >= level for s in val_scores],
        ),
        row(
            name,
            f"per-photo quantile {q} (train F1 {q_f1:.3f})",
            val,
            [s >= np.quantile(s, q) for s in val_scores],
        ),
        row(name, "Otsu per photo", val, [s >= threshold_otsu(s) for s in val_scores]),
    ]


def grey(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(image)


def sato(image: np.ndarray) -> np.ndarray:
    from skimage.filters import sato as sato_filter

    return sato_filter(grey(image), sigmas=SIGMAS, black_ridges=True)


def frangi(image: np.ndarray) -> np.ndarray:
    from skimage.filters import frangi as frangi_filter

    return frangi_filter(grey(image), sigmas=SIGMAS, black_ridges=True)


def probability_row(
    name: str,
    p_crack: ScoreFn,
    train: list[Photo],
    val: list[Photo],
    threshold: float | None = None,
) -> dict:
    """Any P(crack pixel) function (the pixel decoder's, once it exists) at ``threshold``, or,
    when None, at the level of :data:`PROBABILITIES` with the best F1 on ``train``."""
    if threshold is None:
        threshold, f1 = choose(train, [p_crack(p.image) for p in train], PROBABILITIES, "level")
        label = f"{threshold} (train F1 {f1:.3f})"
    else:
        label = f"{threshold} (given)"
    return row(name, label, val, [p_crack(p.image) >= threshold for p in val])


def window_rows(model_ref: str, val: list[Photo]) -> list[dict]:
    """Today's product: the window map at params.yaml's predict settings and the model's
    operating threshold, as the mask predict writes and as the union of flagged windows."""
    from crackdet.workflows.models import load_model, ood_beside

    layout = Layout(REPO)
    params = params_or_defaults(None, REPO)
    settings = predict_settings(params)
    model = load_model(model_ref, layout)
    mapper = prepare_mapper(model, settings, ood_beside(model_ref), layout.graph_cache)
    t = mapper.threshold
    heat, flagged = [], []
    for photo in val:
        result = map_photo(mapper, photo.image).result
        heat.append(result.heatmap >= t)
        union = np.zeros(photo.truth.shape, dtype=bool)
        for tile in result.tiles:
            if tile.p >= t:
                union[tile.y : tile.y + tile.size, tile.x : tile.x + tile.size] = True
        flagged.append(union)
    where = f"{t:.3f} (the model's), scale {settings.scale}"
    return [
        row("window map: heatmap >= t (predict's mask)", where, val, heat),
        row("window map: every pixel of a flagged window", where, val, flagged),
    ]


def fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/uav75/uav75-trainval.zip"))
    parser.add_argument("--model", default="outputs/train", help="today's window model")
    parser.add_argument("--no-windows", action="store_true", help="ridge filters only")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    with readable_folder(Path(args.data), ExtractLimits()) as folder:
        train, val = read_photos(folder, "train_*"), read_photos(folder, "val_*")
    print(
        f"UAV75: {len(train)} train_* photos (thresholds chosen), {len(val)} val_* photos "
        f"scored ({sum(p.planking is not None for p in val)} with planking masks)"
    )
    if not args.no_windows:
        rows += window_rows(args.model, val)
    rows += ridge_rows(f"sato sigmas {SIGMAS}", sato, train, val)
    rows += ridge_rows(f"frangi sigmas {SIGMAS}", frangi, train, val)
    print(
        "| method | threshold | crack F1 (2 px) | precision | recall | planking called crack "
        "| median length error |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['method']} | {r['threshold']} | {fmt(r['pixel_f1'])} | "
            f"{fmt(r['pixel_precision'])} | {fmt(r['pixel_recall'])} | "
            f"{fmt(r['pixel_planking_called'])} | {fmt(r['length_error_median'])} |"
        )
    print(f"in {time.perf_counter() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
