"""Crack maps on full-size photos: sliding windows, batched tiles, per-pixel averaged heatmap.

Windows overlap, the last row and column are flush with the border (nothing dropped or
squashed), tiles go through the model in batches, and overlapping windows' probabilities are
averaged per pixel. Each window may also carry an out-of-distribution score (crackdet.model.ood).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from crackdet.data.windows import pad_to_window, resize_photo, window_grid
from crackdet.model.classifier import CrackClassifier
from crackdet.model.engines import FeatureFn
from crackdet.model.ood import OODModel

# predict.scale: auto keeps each scale within these: below, a window would cover a 900-px
# stretch of photo (no crack is that wide); above, it would magnify a photo's noise 8 times.
SCALE_BOUNDS = (0.25, 8.0)


@dataclass(frozen=True)
class Tile:
    """One window of a map, in the photo's own pixels (rounded from the rescaled photo)."""

    x: int
    y: int
    size: int
    p: float  # calibrated crack probability
    ood: bool | None = None  # unlike the training data (None: no OOD model)
    ood_score: float | None = None
    scale: float = 1.0  # the scale the photo was mapped at for this window

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``<photo>.json``): OOD fields only when there is an OOD model."""
        record: dict[str, Any] = {
            "x": self.x,
            "y": self.y,
            "size": self.size,
            "p": self.p,
            "scale": self.scale,
        }
        if self.ood is not None:
            record.update(ood=self.ood, ood_score=self.ood_score)
        return record


@dataclass(frozen=True)
class CrackMap:
    heatmap: np.ndarray  # float32 HxW, mean crack probability of the windows covering each pixel
    tiles: list[Tile]
    seconds: float
    ood_map: np.ndarray | None = None  # float32 HxW, share of covering windows that are OOD

    @property
    def ood_fraction(self) -> float | None:
        if self.ood_map is None:
            return None
        return float(np.mean([bool(t.ood) for t in self.tiles]))

    def crack_fraction(self, threshold: float) -> float:
        return float((self.heatmap >= threshold).mean())


def auto_scales(
    height: int, width: int, windows: tuple[float, ...], patch: int
) -> tuple[float, ...]:
    """``predict.scale: auto``: one scale per entry of ``windows``, so that a window covers the
    photo's short side divided by that entry, within :data:`SCALE_BOUNDS`. A 512-px drone crop
    and a 12 MP wall photo are thus mapped at the same share of their frame."""
    low, high = SCALE_BOUNDS
    short = min(height, width)
    return tuple(sorted({round(min(high, max(low, patch * w / short)), 3) for w in windows}))


def scales_for(
    scale: float | str, auto_windows: tuple[float, ...], height: int, width: int, patch: int
) -> tuple[float, ...]:
    """The scales a photo of this size is mapped at: ``predict.scale``, or under ``auto`` one per
    ``predict.auto_windows`` entry."""
    if scale == "auto":
        return auto_scales(height, width, auto_windows, patch)
    return (float(scale),)


@torch.inference_mode()
def crack_map(
    model: CrackClassifier,
    photo: np.ndarray,
    overlap: float,
    batch_size: int,
    scale: float | tuple[float, ...] = 1.0,
    ood: OODModel | None = None,
    extract: FeatureFn | None = None,
) -> CrackMap:
    """Slide patch-size windows over an RGB photo (rescaled by each ``scale`` first), batch them
    through the model, average per pixel, then over the scales; the heatmap and tiles are in the
    photo's own pixels.

    ``extract``: the backbone-feature function of an engine (crackdet.model.engines.feature_fn);
    by default the model's own PyTorch forward pass."""
    start_time = time.perf_counter()
    model.eval()
    # With a crackdet classifier the backbone features are computed batch by batch, then the
    # head and the OOD score run once over all tiles (one call each instead of one per batch).
    # A registry (pt2) model is a black box: it runs whole per batch and gets no OOD signal.
    if extract is None and hasattr(model, "logits_from_features"):
        extract = model.features
    scales = scale if isinstance(scale, tuple) else (scale,)
    maps = [_map_at(model, photo, overlap, batch_size, s, ood, extract) for s in scales]
    heatmap = np.mean([m.heatmap for m in maps], axis=0).astype(np.float32)
    ood_map = None
    if all(m.ood_map is not None for m in maps):
        ood_map = np.mean([m.ood_map for m in maps], axis=0).astype(np.float32)
    tiles = [tile for m in maps for tile in m.tiles]
    return CrackMap(heatmap, tiles, time.perf_counter() - start_time, ood_map)


def _map_at(
    model: CrackClassifier,
    photo: np.ndarray,
    overlap: float,
    batch_size: int,
    scale: float,
    ood: OODModel | None,
    extract: FeatureFn | None,
) -> CrackMap:
    """The map at one scale (its ``seconds`` is not measured: see :func:`crack_map`)."""
    window = model.spec.patch_size
    original_h, original_w = photo.shape[:2]
    photo = resize_photo(photo, scale)
    height, width = photo.shape[:2]
    padded = pad_to_window(photo, window)
    positions = window_grid(padded.shape[0], padded.shape[1], window, overlap)
    outputs = []
    for begin in range(0, len(positions), batch_size):
        chunk = positions[begin : begin + batch_size]
        # Tiles are gathered from the HWC photo (contiguous rows, fast) and viewed as NCHW: that
        # view is channels-last, which runs PyTorch's CPU convolutions ~1.7-2x faster.
        tiles = np.stack([padded[y : y + window, x : x + window] for y, x in chunk])
        batch = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255.0)
        outputs.append(extract(batch) if extract is not None else model(batch))
    stacked = torch.cat(outputs)
    logits = model.logits_from_features(stacked) if extract is not None else stacked
    probs = torch.softmax(logits, dim=1)[:, 1].numpy()
    all_scores = flags = None
    if ood is not None and extract is not None:
        all_scores = ood.score(stacked.numpy())
        flags = all_scores > ood.threshold
    heatmap = _to_size(
        _average(positions, probs, window, padded.shape[:2], (height, width)),
        (original_h, original_w),
    )
    ood_map = None
    if flags is not None:
        ood_map = _to_size(
            _average(
                positions, flags.astype(np.float64), window, padded.shape[:2], (height, width)
            ),
            (original_h, original_w),
        )
    tiles = [
        Tile(
            x=round(x / scale),
            y=round(y / scale),
            size=round(window / scale),
            p=round(float(p), 6),
            ood=bool(flags[k]) if flags is not None else None,
            ood_score=round(float(all_scores[k]), 4) if all_scores is not None else None,
            scale=scale,
        )
        for k, ((y, x), p) in enumerate(zip(positions, probs, strict=True))
    ]
    return CrackMap(heatmap, tiles, 0.0, ood_map)


def _average(
    positions: list[tuple[int, int]],
    values: np.ndarray,
    window: int,
    padded_shape: tuple[int, ...],
    shape: tuple[int, int],
) -> np.ndarray:
    """Per-pixel mean of the values of the windows covering each pixel, cropped to ``shape``."""
    total = np.zeros(padded_shape, dtype=np.float32)  # float32: a 12 MP photo stays ~100 MB
    count = np.zeros(padded_shape, dtype=np.float32)
    for (y, x), value in zip(positions, values, strict=True):
        total[y : y + window, x : x + window] += value
        count[y : y + window, x : x + window] += 1
    return (total / count)[: shape[0], : shape[1]].astype(np.float32)


def _to_size(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if array.shape == shape:
        return array
    resized = Image.fromarray(array, "F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)
