"""Training the window head on features computed in context.

The classifier's head was trained on isolated 227-px patches; inside a photo a window's
stride-32 features also see its neighbours and no padding, and that head agrees with isolated
windows only loosely. So the window head starts from the classifier's head and is fine-tuned on
window means taken from whole passes over larger images, with labels from two places:

- **mosaics** of the split's training patches (``mosaic`` x ``mosaic`` per pass, each centre-
  cropped to 224 px = 7 x 7 cells): each patch's label applies to the window centred on it, whose
  cells it fills exactly, while its neighbours (unrelated patches, cracked or not) are in the
  features' view; val patches make the val mosaics;
- **synthetic photos** with crack masks (:func:`crackdet.data.sources.synthetic.render_photo`):
  every cell's window labelled by the masks sources' rule
  (:func:`crackdet.data.sources.masks.label_windows`: crack, clean or left out), a quarter of
  the photos for val.

Only the window means of labelled cells are kept, so epochs run on vectors (the backbone runs
once per mosaic or photo). Epoch 0 is the classifier's head itself; the best epoch (lowest
weighted val loss, the earlier on ties) is kept, then the temperature is fitted on the val cells
and the threshold set by ``train.threshold`` as the classifier's is.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crackdet.core.params import MasksSource, TrainParams, WindowHeadParams
from crackdet.core.progress import progress
from crackdet.data.images import PATCH_SIZE
from crackdet.data.manifest import ManifestRow
from crackdet.data.sources.masks import PixelCounts, label_windows
from crackdet.data.sources.synthetic import render_photo
from crackdet.model.calibrate import f1_optimal_threshold, fit_temperature
from crackdet.model.classifier import CrackClassifier
from crackdet.model.dense import STRIDE, DenseTrunk
from crackdet.model.fitting import sample_weights
from crackdet.model.inputs import load_images, targets_of
from crackdet.model.window_head import WindowHead, WindowHeadSpec

# The masks rule for synthetic photos' cells: the bench's UAV75 masks source's values
# (bench/protocols/common.py), so rendered and real masks label windows alike.
PHOTO_RULE = MasksSource(
    kind="masks",
    path="",
    photos="*",
    scales=(1.0,),
    centre=0.5,
    crack_length=0.25,
    margin=0.125,
    planking_length=0.5,
    max_clean=0,
    licence="generated",
)
PHOTOS_SOURCE = "synthetic photos"  # how the photos' cells are named in figures


@dataclass(frozen=True)
class Cells:
    """Window means of labelled cells, computed in context: (N, C) features, targets, weights."""

    features: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def empty(cls, channels: int) -> Cells:
        return cls(torch.zeros(0, channels), torch.zeros(0, dtype=torch.long), torch.zeros(0))

    def __len__(self) -> int:
        return len(self.targets)

    def plus(self, other: Cells) -> Cells:
        return Cells(
            torch.cat([self.features, other.features]),
            torch.cat([self.targets, other.targets]),
            torch.cat([self.weights, other.weights]),
        )


@dataclass(frozen=True)
class HeadEpoch:
    """One epoch of window-head training (epoch 0: the classifier's head, untrained here)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_auc: float
    seconds: float


@dataclass
class WindowHeadResult:
    head: WindowHead  # the best epoch's weights, temperature fitted on val
    spec: WindowHeadSpec
    history: list[HeadEpoch]
    best_epoch: int
    metrics: dict[str, float]  # val figures of the saved head, and the cells it saw
    timings: dict[str, float]


def trunk_of(model: CrackClassifier) -> DenseTrunk:
    """The classifier's backbone as a :class:`DenseTrunk` (the same weights, eval mode)."""
    spec = model.spec
    return DenseTrunk(spec.backbone, model.backbone, spec.mean, spec.std).eval()


@torch.inference_mode()
def window_means(trunk: DenseTrunk, head: WindowHead, images: torch.Tensor) -> torch.Tensor:
    """Window means (N, C, H/32, W/32) of float RGB [0, 1] NCHW images (sides multiples of 32)."""
    return head.pooled(trunk(images.contiguous(memory_format=torch.channels_last)))


def patch_slots(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW patches centre-cropped to whole cells (227 → 224 px: 7 x 7 cells)."""
    side = (images.shape[-1] // STRIDE) * STRIDE
    top = (images.shape[-2] - side) // 2
    left = (images.shape[-1] - side) // 2
    return images[:, :, top : top + side, left : left + side]


def mosaic_cells(
    trunk: DenseTrunk,
    head: WindowHead,
    patches: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    mosaic: int,
    seed: int,
    desc: str = "window head: mosaics",
) -> Cells:
    """Patches (uint8 NCHW, whole cells) placed ``mosaic`` per side in a seeded order, one pass
    per mosaic; each patch's window mean is read at the cell centred on it. A last mosaic short
    of patches is filled from the start of the order (those repeats are not read again)."""
    n = len(patches)
    if n == 0:
        return Cells.empty(head.hidden.in_channels)
    per = mosaic * mosaic
    cells = patches.shape[-1] // STRIDE
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    padded = torch.cat([order, order.repeat(per)[: (-n) % per]]) if n % per else order
    features = torch.empty(n, head.hidden.in_channels)
    for begin in progress(range(0, n, per), desc=desc, unit="mosaic"):
        slots = padded[begin : begin + per]
        grid = patches[slots].view(mosaic, mosaic, 3, *patches.shape[-2:])
        image = grid.permute(2, 0, 3, 1, 4).reshape(1, 3, mosaic * patches.shape[-2], -1)
        means = window_means(trunk, head, image.float().div_(255.0))[0]
        centre = cells // 2
        picked = means[:, centre::cells, centre::cells].reshape(means.shape[0], -1).T
        real = min(per, n - begin)  # the filled slots repeat patches already read
        features[slots[:real]] = picked[:real]
    return Cells(features, targets.clone(), weights.clone())


def photo_labels(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per cell of a photo's stride-32 grid: 1 crack, 0 clean, -1 left out, as a masks source
    labels the 227-px window centred on the cell (:func:`label_windows`)."""
    height, width = grid
    half = PATCH_SIZE // 2
    starts = [
        (y * STRIDE + STRIDE // 2 - half, x * STRIDE + STRIDE // 2 - half)
        for y in range(height)
        for x in range(width)
    ]
    crack, clean, hard, _ = label_windows(PixelCounts(mask > 0), None, starts, 1.0, PHOTO_RULE)
    labels = np.full(len(starts), -1, dtype=np.int64)
    labels[clean + hard] = 0
    labels[crack] = 1
    return labels.reshape(height, width)


def render_cells(
    trunk: DenseTrunk, head: WindowHead, photos: int, size: int, seed: int, first: int = 0
) -> Cells:
    """Window means of ``photos`` synthetic photos (``size`` px square, numbered from
    ``first``), each cell labelled by :func:`photo_labels`; classes weigh alike."""
    side = max(STRIDE, (size // STRIDE) * STRIDE)
    features, targets = [], []
    for index in progress(range(first, first + photos), desc="window head: photos", unit="photo"):
        rng = np.random.default_rng([seed, 0x57, index])
        image, mask = render_photo(rng, side, side, n_cracks=int(rng.integers(1, 4)))
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)
        means = window_means(trunk, head, tensor)[0]
        labels = torch.from_numpy(photo_labels(mask, means.shape[-2:])).reshape(-1)
        keep = labels >= 0
        features.append(means.reshape(means.shape[0], -1).T[keep])
        targets.append(labels[keep])
    if not features:
        return Cells.empty(head.hidden.in_channels)
    target = torch.cat(targets)
    return Cells(torch.cat(features), target, _class_balanced(target))


def _class_balanced(targets: torch.Tensor) -> torch.Tensor:
    """Weights, mean 1, under which each present class weighs the same in total."""
    counts = torch.bincount(targets, minlength=2).float()
    present = int((counts > 0).sum())
    per_class = torch.where(counts > 0, len(targets) / (present * counts.clamp(min=1)), 0.0)
    return per_class[targets]


def _joined(patches: Cells, photos: Cells, sources: int) -> Cells:
    """Patch cells (their weights as the classifier's source balance gives them) and photo
    cells counted as one more source: their total weight is the patches' over ``sources``."""
    if not len(photos):
        return patches
    if not len(patches):
        return photos
    share = float(patches.weights.sum()) / max(1, sources) / float(photos.weights.sum())
    return patches.plus(Cells(photos.features, photos.targets, photos.weights * share))


def _loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_cell = nn.functional.cross_entropy(logits, targets, reduction="none")
    return (per_cell * weights).sum() / weights.sum()


def _auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """ROC AUC (ties half), NaN with one class only; numpy, no scikit-learn import here."""
    s, t = scores.double().numpy(), targets.numpy().astype(bool)
    pos, neg = int(t.sum()), int((~t).sum())
    if not pos or not neg:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average ranks over ties, so equal scores count half.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[t].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _evaluate(head: WindowHead, cells: Cells) -> tuple[float, float, float]:
    """Weighted loss and accuracy at 0.5, and ROC AUC, of raw (uncalibrated) logits."""
    head.eval()
    with torch.no_grad():
        logits = head.raw_logits(cells.features)
        loss = _loss(logits, cells.targets, cells.weights).item()
        hits = (logits.argmax(1) == cells.targets).float()
        acc = float((hits * cells.weights).sum() / cells.weights.sum())
        auc = _auc(logits[:, 1] - logits[:, 0], cells.targets)
    return loss, acc, auc


def fit_window_head(
    head: WindowHead,
    train: Cells,
    val: Cells,
    cfg: WindowHeadParams,
    seed: int,
    on_epoch: Callable[[HeadEpoch], None] | None = None,
) -> tuple[list[HeadEpoch], int]:
    """Adam on the head's MLP over ``cfg.epochs``; the head ends with the weights of the best
    epoch (lowest weighted val loss; epoch 0 is the head as given). Returns the history and
    that epoch."""
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    params = [p for name, p in head.named_parameters() if not name.startswith("pool")]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    start = time.perf_counter()
    train_loss = _evaluate(head, train)[0] if len(train) else math.nan
    record = HeadEpoch(0, train_loss, *_evaluate(head, val), time.perf_counter() - start)
    history = [record]
    if on_epoch:
        on_epoch(record)
    best_state, best_loss, best_epoch = copy.deepcopy(head.state_dict()), record.val_loss, 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        head.train()
        total, order = 0.0, torch.randperm(len(train), generator=shuffle)
        for begin in range(0, len(order), cfg.batch_size):
            idx = order[begin : begin + cfg.batch_size]
            loss = _loss(
                head.raw_logits(train.features[idx]), train.targets[idx], train.weights[idx]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * float(train.weights[idx].sum())
        train_loss = total / float(train.weights.sum())
        record = HeadEpoch(epoch, train_loss, *_evaluate(head, val), time.perf_counter() - start)
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if record.val_loss < best_loss:
            best_state, best_loss, best_epoch = (
                copy.deepcopy(head.state_dict()),
                record.val_loss,
                epoch,
            )
    head.load_state_dict(best_state)
    return history, best_epoch


def in_context_cells(
    model: CrackClassifier,
    head: WindowHead,
    cfg: TrainParams,
    seed: int,
    images_dir,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
) -> tuple[Cells, Cells]:
    """The train and val cells: mosaics of the rows' patches and synthetic photos."""
    wh = cfg.window_head
    trunk = trunk_of(model)
    sources = len({r.source for r in train_rows})

    def patch_cells(rows: list[ManifestRow], offset: int, what: str) -> Cells:
        weights = sample_weights(rows, cfg.balance, cfg.source_weights)
        patches = patch_slots(load_images(images_dir, rows))
        return mosaic_cells(
            trunk, head, patches, targets_of(rows), weights, wh.mosaic, seed + offset, what
        )

    val_photos = wh.photos // 4
    train = _joined(
        patch_cells(train_rows, 0, "window head: train mosaics"),
        render_cells(trunk, head, wh.photos - val_photos, wh.photo_size, seed),
        sources,
    )
    val = _joined(
        patch_cells(val_rows, 1, "window head: val mosaics"),
        render_cells(trunk, head, val_photos, wh.photo_size, seed, first=wh.photos),
        len({r.source for r in val_rows}),
    )
    return train, val


def train_window_head(
    model: CrackClassifier,
    cfg: TrainParams,
    seed: int,
    images_dir,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
    on_epoch: Callable[[HeadEpoch], None] | None = None,
) -> WindowHeadResult:
    """The window head of a trained (calibrated) classifier, fine-tuned in context."""
    wh = cfg.window_head
    clock = time.perf_counter()
    head = WindowHead.from_classifier(model.head, 1.0)
    train, val = in_context_cells(model, head, cfg, seed, images_dir, train_rows, val_rows)
    timings = {"features_s": time.perf_counter() - clock}
    clock = time.perf_counter()
    history, best_epoch = fit_window_head(head, train, val, wh, seed, on_epoch)
    timings["epochs_s"] = time.perf_counter() - clock
    with torch.no_grad():
        raw = head.raw_logits(val.features)
    temperature = fit_temperature(raw, val.targets) if len(set(val.targets.tolist())) > 1 else 1.0
    head.temperature.fill_(temperature)
    probs = torch.softmax(raw / temperature, 1)[:, 1].numpy()
    threshold = f1_optimal_threshold(probs, val.targets.numpy()) if cfg.threshold == "f1" else 0.5
    best = history[best_epoch]
    trained_on = (
        f"{len(train_rows)} training patches in {wh.mosaic}x{wh.mosaic} mosaics and "
        f"{wh.photos - wh.photos // 4} synthetic {wh.photo_size}-px photos"
    )
    spec = WindowHeadSpec(
        features=head.hidden.in_channels,
        hidden=head.hidden.out_channels,
        window_cells=head.window_cells,
        temperature=temperature,
        threshold=threshold,
        trained_on=trained_on,
    )
    hits = (probs >= threshold) == val.targets.numpy().astype(bool)
    metrics = {
        "best_epoch": float(best_epoch),
        "best_val_loss": best.val_loss,
        "best_val_auc": best.val_auc,
        "val_acc_at_threshold": float(
            (torch.from_numpy(hits).float() * val.weights).sum() / val.weights.sum()
        ),
        "classifier_head_val_auc": history[0].val_auc,
        "temperature": temperature,
        "threshold": threshold,
        "train_cells": float(len(train)),
        "val_cells": float(len(val)),
    }
    return WindowHeadResult(head.eval(), spec, history, best_epoch, metrics, timings)


def classifier_window_head(model: CrackClassifier) -> WindowHeadResult:
    """The classifier's head read densely as it is (``train.window_head.enabled: false``): no
    features in context, the classifier's temperature and threshold."""
    spec = model.spec
    temperature = float(model.temperature)  # what the classifier divides by
    head = WindowHead.from_classifier(model.head, temperature).eval()
    window = WindowHeadSpec(
        features=head.hidden.in_channels,
        hidden=head.hidden.out_channels,
        window_cells=head.window_cells,
        temperature=temperature,
        threshold=spec.threshold,
        trained_on="",
    )
    return WindowHeadResult(head, window, [], 0, {}, {})
