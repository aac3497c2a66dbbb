"""Training: the blog's recipe (frozen ImageNet backbone + small head, Adam, StepLR, augmentation),
made deterministic and honest.

With the backbone frozen, an epoch is two separable steps: run the backbone over this epoch's
augmented view of every training image, then train the head on those features. Each image's
augmentation is drawn from its own generator seeded by (seed, epoch, index), so a rerun with the
same params and data gives identical numbers regardless of batch order. Validation features carry
no augmentation, so they are computed once. The best epoch is chosen on val, never on test.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from crackdet.data import CLASSES, PATCH_SIZE, ManifestRow, load_rgb
from crackdet.models import FORWARD_CHUNK, CrackClassifier, build_classifier
from crackdet.params import AugmentParams, Params


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    model: CrackClassifier
    history: list[EpochRecord]
    best_epoch: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True)


def load_images(images_dir: Path, rows: list[ManifestRow], size: int = PATCH_SIZE) -> torch.Tensor:
    """All images of a split as one uint8 NCHW tensor (decoded once, reused every epoch)."""
    batch = np.stack([load_rgb(images_dir / row.path, size) for row in rows])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def targets_of(rows: list[ManifestRow]) -> torch.Tensor:
    return torch.tensor([row.target for row in rows], dtype=torch.long)


def augment_image(
    image: torch.Tensor, params: AugmentParams, rng: np.random.Generator
) -> torch.Tensor:
    """One random view of a float CHW image in [0, 1]: rotation, flips, colour jitter."""
    if params.rotation > 0:
        angle = float(rng.uniform(-params.rotation, params.rotation))
        image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR)
    if params.hflip and rng.random() < 0.5:
        image = TF.horizontal_flip(image)
    if params.vflip and rng.random() < 0.5:
        image = TF.vertical_flip(image)
    if params.color_jitter > 0:
        low, high = 1 - params.color_jitter, 1 + params.color_jitter
        image = TF.adjust_brightness(image, float(rng.uniform(low, high)))
        image = TF.adjust_contrast(image, float(rng.uniform(low, high)))
        image = TF.adjust_saturation(image, float(rng.uniform(low, high)))
    return image.clamp(0.0, 1.0)


def view_of(
    images: torch.Tensor,
    indices: range,
    augment: AugmentParams | None,
    seed: int,
    epoch: int,
) -> torch.Tensor:
    """Float batch for ``indices``; augmented per image from (seed, epoch, index) when asked."""
    batch = images[indices.start : indices.stop].float().div_(255.0)
    if augment is None:
        return batch
    return torch.stack(
        [
            augment_image(batch[k], augment, np.random.default_rng([seed, epoch, index]))
            for k, index in enumerate(indices)
        ]
    )


@torch.inference_mode()
def backbone_features(
    model: CrackClassifier,
    images: torch.Tensor,
    batch_size: int = FORWARD_CHUNK,
    augment: AugmentParams | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> torch.Tensor:
    """Backbone features (N, F) of every image, in batches, backbone in eval mode."""
    model.backbone.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        indices = range(start, min(start + batch_size, len(images)))
        batch = view_of(images, indices, augment, seed, epoch)
        chunks.append(model.features(batch.contiguous(memory_format=torch.channels_last)))
    return torch.cat(chunks)


def _evaluate_head(
    head: nn.Module, features: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():
        logits = head(features)
        loss = nn.functional.cross_entropy(logits, targets).item()
        acc = (logits.argmax(1) == targets).float().mean().item()
    return loss, acc


def train_model(
    params: Params,
    images_dir: Path,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train the classifier; the returned model holds the head of the best val epoch."""
    cfg = params.train
    seed = params.base.seed
    set_determinism(seed)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = build_classifier(
        cfg.backbone, cfg.pretrained, cfg.hidden, cfg.dropout, PATCH_SIZE, CLASSES
    )
    model = model.to(memory_format=torch.channels_last)
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)  # the blog's recipe: only the head learns
    torch.manual_seed(seed)  # head init and dropout draw from here, independent of backbone build
    for layer in model.head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    timings["build_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    train_images = load_images(images_dir, train_rows)
    val_images = load_images(images_dir, val_rows)
    train_targets, val_targets = targets_of(train_rows), targets_of(val_rows)
    timings["load_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    val_features = backbone_features(model, val_images)
    timings["val_features_s"] = time.perf_counter() - clock

    optimizer = torch.optim.Adam(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, cfg.lr_gamma)
    shuffle = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    best_state, best_key, best_epoch = None, (-math.inf, -math.inf), 0
    feature_seconds = 0.0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        features = backbone_features(model, train_images, FORWARD_CHUNK, cfg.augment, seed, epoch)
        feature_seconds += time.perf_counter() - start
        lr = optimizer.param_groups[0]["lr"]
        model.head.train()
        total_loss, correct = 0.0, 0
        order = torch.randperm(len(features), generator=shuffle)
        for begin in range(0, len(order), cfg.batch_size):
            idx = order[begin : begin + cfg.batch_size]
            logits = model.head(features[idx])
            loss = nn.functional.cross_entropy(logits, train_targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == train_targets[idx]).sum())
        scheduler.step()
        val_loss, val_acc = _evaluate_head(model.head, val_features, val_targets)
        record = EpochRecord(
            epoch,
            total_loss / len(features),
            correct / len(features),
            val_loss,
            val_acc,
            lr,
            time.perf_counter() - start,
        )
        history.append(record)
        if on_epoch:
            on_epoch(record)
        key = (val_acc, -val_loss)  # best val accuracy; ties go to the lower val loss
        if key > best_key:
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(model.head.state_dict())
    assert best_state is not None
    model.head.load_state_dict(best_state)
    model.eval()
    n_views = len(train_images) * cfg.epochs + len(val_images)
    timings["train_features_s"] = feature_seconds
    timings["images_per_s"] = n_views / max(feature_seconds + timings["val_features_s"], 1e-9)
    model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(model, history, best_epoch, timings)
