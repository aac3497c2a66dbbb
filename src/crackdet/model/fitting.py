"""Training: the blog's recipe (frozen ImageNet backbone + small head, Adam, StepLR, augmentation),
made deterministic, honest and cheap.

With the backbone frozen (``train.unfreeze: 0``, the default) an epoch is two separable steps: take
the backbone features of this epoch's view of every training image, then train the head on them.
Features come from :mod:`crackdet.model.features`: ``train.augment.views`` views per image (view 0
plain, the others augmented from (seed, view, image sha256)), computed once and cached, and epochs
cycle through the views. The blog instead ran the backbone over freshly augmented images every
epoch: the same kind of augmentation at a multiple of the cost (bench/speed/train_speed.py).

With ``train.unfreeze: N > 0`` the last N backbone blocks are fine-tuned with the head (the device
is picked automatically). ``train.finetune: cached`` splits the backbone into a frozen trunk and
the tuned tail (:func:`crackdet.model.backbones.split_backbone`) and caches the trunk's
activations of the same views, so an epoch runs only the tail: one block of EfficientNet-Lite0
trains on a CPU.
``online`` augments afresh every epoch and runs the whole backbone each time (for a GPU). Either
way the probe baseline gets the pretrained backbone's features, computed before any weight moves.
In every mode the best epoch is chosen on val, never on test, and the same params and data give
identical numbers on a rerun.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crackdet.core.errors import CrackdetError
from crackdet.core.params import TrainParams
from crackdet.core.progress import progress
from crackdet.data.images import CLASSES, PATCH_SIZE
from crackdet.data.manifest import ManifestRow
from crackdet.model.backbones import backbone_units, split_backbone
from crackdet.model.calibrate import (
    expected_calibration_error,
    f1_optimal_threshold,
    fit_temperature,
)
from crackdet.model.classifier import FORWARD_CHUNK, CrackClassifier, build_classifier
from crackdet.model.engines import effective_engine, feature_fn
from crackdet.model.features import FeatureCache, augmented_views, cache_key, features_for
from crackdet.model.inputs import load_images, targets_of


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
    # The trained model's features of the plain train/val images (calibration, OOD model), when
    # training ran on cached inputs (None for finetune: online).
    val_features: torch.Tensor | None = None
    train_features: torch.Tensor | None = None
    # The pretrained backbone's features of the plain train/val images, for the probe baseline
    # (None when the backbone is not pretrained and fine-tuned: nothing frozen to compare on).
    probe_inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]


@dataclass
class _Split:
    """One split's rows, their targets, their loss weights, and which rows are never augmented."""

    rows: list[ManifestRow]
    targets: torch.Tensor
    weights: torch.Tensor
    plain: torch.Tensor  # bool: rows of sources whose images are seen as they are

    @classmethod
    def of(
        cls,
        rows: list[ManifestRow],
        balance: str,
        weights: Mapping[str, float],
        plain_sources: frozenset[str],
    ) -> _Split:
        plain = torch.tensor([r.source in plain_sources for r in rows], dtype=torch.bool)
        return cls(rows, targets_of(rows), sample_weights(rows, balance, weights), plain)


def sample_weights(
    rows: list[ManifestRow], balance: str, source_weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Per-image loss weights, mean 1. ``source``: every source weighs its ``source_weights``
    entry (default 1) in total, and within a source every class it has the same (400 deck
    patches are not drowned by 4,000 others, nor a source's one class by another's); ``none``:
    every image weighs its source's weight."""
    if not rows:
        return torch.ones(0)
    weight = dict(source_weights or {})
    if balance == "none":
        raw = torch.tensor([weight.get(r.source, 1.0) for r in rows], dtype=torch.float64)
        return (raw * len(rows) / raw.sum()).float()
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        counts[row.source, row.label] = counts.get((row.source, row.label), 0) + 1
    classes = {s: sum(1 for (src, _) in counts if src == s) for s, _ in counts}
    raw = torch.tensor(
        [weight.get(r.source, 1.0) / (classes[r.source] * counts[r.source, r.label]) for r in rows],
        dtype=torch.float64,
    )
    return (raw * len(rows) / raw.sum()).float()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def train_model(
    cfg: TrainParams,
    seed: int,
    images_dir: Path,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
    on_epoch: Callable[[EpochRecord], None] | None = None,
    features_cache: Path | None = None,
    graph_cache: Path | None = None,
    plain_sources: frozenset[str] = frozenset(),
) -> TrainResult:
    """Train the classifier; the returned model holds the weights of the best val epoch.

    ``features_cache``: where frozen-backbone features, and for ``finetune: cached`` the trunk's
    activations, are cached (None: compute, don't store); ``graph_cache``: exported ONNX graphs
    for the graph engines (None: a temporary export); ``plain_sources``: sources whose images
    every view shows unaugmented (a masks source's windows: already cut at the maps' scales).
    """
    clock = time.perf_counter()
    model, trainable = _build(cfg, seed)
    timings = {"build_s": time.perf_counter() - clock}
    train = _Split.of(train_rows, cfg.balance, cfg.source_weights, plain_sources)
    val = _Split.of(val_rows, cfg.balance, cfg.source_weights, plain_sources)
    frozen = cfg.unfreeze == 0
    if not frozen and cfg.finetune == "cached":  # before any forward pass: a bad split fails now
        split_backbone(cfg.backbone, model.backbone, cfg.unfreeze)
    engine = effective_engine(model, cfg.engine)
    extract = feature_fn(model, engine, graph_cache)
    clock = time.perf_counter()
    probe_inputs, forwards = None, 0
    if not frozen and cfg.pretrained:
        # The probe baseline always sees the pretrained backbone's features, whatever is tuned;
        # computed before any weight changes (and shared with frozen runs through the cache).
        plain = (
            FeatureCache(features_cache, cache_key(model, None, seed, engine))
            if features_cache
            else None
        )
        probe_train, n = features_for(model, images_dir, train_rows, 0, None, seed, plain, extract)
        probe_val, m = features_for(model, images_dir, val_rows, 0, None, seed, plain, extract)
        probe_inputs, forwards = (probe_train, probe_val), n + m
    if frozen or cfg.finetune == "cached":
        fit = _CachedFit.prepare(
            model, cfg, seed, images_dir, train, val, engine, extract, features_cache
        )
        forwards += fit.forwards
    else:
        fit = _OnlineFit.prepare(model, trainable, cfg, seed, images_dir, train, val)
    timings["features_s"] = time.perf_counter() - clock
    timings["forward_passes"] = forwards
    timings["images_per_s"] = forwards / timings["features_s"] if forwards else 0.0

    clock = time.perf_counter()
    history, best_epoch = _run_epochs(model, cfg, seed, fit, on_epoch)
    timings["epochs_s"] = time.perf_counter() - clock
    model.eval()
    train_features, val_features = fit.final_features()
    if frozen:
        probe_inputs = (train_features.cpu(), val_features.cpu())
    model = model.to(device="cpu", memory_format=torch.contiguous_format)
    return TrainResult(
        model,
        history,
        best_epoch,
        timings,
        val_features=val_features.cpu() if val_features is not None else None,
        train_features=train_features.cpu() if train_features is not None else None,
        probe_inputs=probe_inputs,
    )


def calibrate_on_val(
    result: TrainResult, images_dir: Path, val_rows: list[ManifestRow], threshold_rule: str = "f1"
) -> dict[str, float]:
    """Fit the temperature on val and set the operating threshold (``threshold_rule``: ``f1``,
    the F1-optimal one on val, or ``fixed``, 0.5 on the calibrated probability, which carries
    over to other sources better than a threshold tuned on the training sources' val split);
    store both in the model."""
    model = result.model
    features = result.val_features
    if features is None:  # finetune: online: the tuned backbone's features were never computed
        features, _ = features_for(model, images_dir, val_rows, 0, None, 0, None)
    targets = targets_of(val_rows)
    with torch.no_grad():
        raw = model.head(features)
    temperature = fit_temperature(raw, targets)
    raw_probs = torch.softmax(raw, 1)[:, 1].numpy()
    probs = torch.softmax(raw / temperature, 1)[:, 1].numpy()
    threshold = f1_optimal_threshold(probs, targets.numpy()) if threshold_rule == "f1" else 0.5
    model.temperature.fill_(temperature)
    model.spec = dataclasses.replace(model.spec, threshold=threshold, temperature=temperature)
    return {
        "temperature": temperature,
        "threshold": threshold,
        "val_ece_raw": expected_calibration_error(raw_probs, targets.numpy()),
        "val_ece": expected_calibration_error(probs, targets.numpy()),
    }


def _build(cfg: TrainParams, seed: int) -> tuple[CrackClassifier, list[nn.Module]]:
    """The classifier on its device, backbone frozen except the last ``cfg.unfreeze`` blocks,
    head initialised from ``seed``; returns it and the blocks that train."""
    set_determinism(seed)
    model = build_classifier(
        cfg.backbone, cfg.pretrained, cfg.hidden, cfg.dropout, PATCH_SIZE, CLASSES, cfg.unfreeze
    )
    model = model.to(device=pick_device(), memory_format=torch.channels_last)
    units = backbone_units(cfg.backbone, model.backbone)
    if cfg.unfreeze > len(units):
        raise CrackdetError(
            f"params.yaml: train.unfreeze is {cfg.unfreeze} but {cfg.backbone} has "
            f"{len(units)} blocks"
        )
    trainable = units[len(units) - cfg.unfreeze :] if cfg.unfreeze else []
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)  # the blog's recipe: only the head learns…
    for unit in trainable:  # …unless fine-tuning the last blocks was asked for
        for parameter in unit.parameters():
            parameter.requires_grad_(True)
    torch.manual_seed(seed)  # head init and dropout draw from here, independent of backbone build
    for layer in model.head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return model, trainable


class _CachedFit:
    """Training on cached inputs: the head on pooled features (frozen backbone), or the last
    units + head on the frozen trunk's activations (``finetune: cached``). Epochs cycle through
    ``train.augment.views`` views computed once."""

    def __init__(
        self,
        model: CrackClassifier,
        learner: nn.Module,
        train: _Split,
        val: _Split,
        train_views: list[torch.Tensor],
        val_inputs: torch.Tensor,
        cfg: TrainParams,
        forwards: int,
    ) -> None:
        self.model, self.learner, self.cfg, self.forwards = model, learner, cfg, forwards
        self.train, self.val = train, val
        self.train_views, self.val_inputs = train_views, val_inputs
        self.device = model.mean.device

    @classmethod
    def prepare(
        cls,
        model: CrackClassifier,
        cfg: TrainParams,
        seed: int,
        images_dir: Path,
        train: _Split,
        val: _Split,
        engine: str,
        extract: Callable[[torch.Tensor], torch.Tensor],
        features_cache: Path | None,
    ) -> _CachedFit:
        frozen = cfg.unfreeze == 0
        learner: nn.Module = model.head
        dtype: type = np.float32
        if not frozen:
            trunk, tail = split_backbone(cfg.backbone, model.backbone, cfg.unfreeze)
            # Trunk activations stay float16 in memory too; each batch is widened exactly.
            learner = nn.Sequential(_Widen(), tail, model.head)
            extract, dtype = trunk_fn(model, trunk), np.float16
        # Frozen: pooled features by the stage's engine. Cached fine-tuning: the trunk's
        # activations by PyTorch, keyed by how many units follow them.
        key_engine, key_units = (engine, 0) if frozen else ("torch", cfg.unfreeze)
        caches = (
            {
                view: FeatureCache(
                    features_cache,
                    cache_key(model, cfg.augment if view else None, seed, key_engine, key_units),
                )
                for view in range(min(cfg.augment.views, 2))  # plain, and all augmented views
            }
            if features_cache
            else {}
        )
        val_inputs, forwards = features_for(
            model, images_dir, val.rows, 0, None, seed, caches.get(0), extract, dtype
        )
        device = model.mean.device
        views: list[torch.Tensor] = []
        augmented = [
            r for r, plain in zip(train.rows, train.plain.tolist(), strict=True) if not plain
        ]
        for view in range(cfg.augment.views):
            if view and not augmented:  # every row plain (masks windows only): view 0 again
                views.append(views[0])
                continue
            features, n = features_for(
                model,
                images_dir,
                augmented if view else train.rows,
                view,
                cfg.augment if view else None,
                seed,
                caches.get(min(view, 1)),
                extract,
                dtype,
            )
            if view:  # plain rows: the view-0 features again
                features = views[0].cpu().index_put((~train.plain,), features)
            views.append(features.to(device))
            forwards += n
        return cls(model, learner, train, val, views, val_inputs.to(device), cfg, forwards)

    def epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, shuffle: torch.Generator
    ) -> tuple[float, float]:
        features = self.train_views[(epoch - 1) % len(self.train_views)]
        return _head_epoch(
            self.learner,
            features,
            self.train.targets.to(self.device),
            self.train.weights.to(self.device),
            optimizer,
            self.cfg.batch_size,
            shuffle,
        )

    def validate(self) -> tuple[float, float]:
        return _evaluate_head(
            self.learner,
            self.val_inputs,
            self.val.targets.to(self.device),
            self.val.weights.to(self.device),
        )

    def final_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained model's features of the plain train and val images."""
        if self.cfg.unfreeze == 0:
            return self.train_views[0], self.val_inputs
        with torch.inference_mode():  # the tuned tail over the cached trunk activations
            return (
                _in_chunks(self.learner[:2], self.train_views[0], self.device),
                _in_chunks(self.learner[:2], self.val_inputs, self.device),
            )


class _OnlineFit:
    """Fine-tuning with fresh augmentation per image and epoch and a whole forward pass each
    time (``finetune: online``, for a GPU)."""

    def __init__(
        self,
        model: CrackClassifier,
        trainable: list[nn.Module],
        cfg: TrainParams,
        seed: int,
        train: _Split,
        val: _Split,
        train_images: torch.Tensor,
        val_images: torch.Tensor,
    ) -> None:
        self.model, self.trainable, self.cfg, self.seed = model, trainable, cfg, seed
        self.train, self.val = train, val
        self.train_images, self.val_images = train_images, val_images
        self.device = model.mean.device

    @classmethod
    def prepare(
        cls,
        model: CrackClassifier,
        trainable: list[nn.Module],
        cfg: TrainParams,
        seed: int,
        images_dir: Path,
        train: _Split,
        val: _Split,
    ) -> _OnlineFit:
        train_images = load_images(images_dir, train.rows)
        val_images = load_images(images_dir, val.rows)
        return cls(model, trainable, cfg, seed, train, val, train_images, val_images)

    def epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, shuffle: torch.Generator
    ) -> tuple[float, float]:
        return _finetune_epoch(
            self.model,
            self.trainable,
            self.train_images,
            self.train,
            optimizer,
            self.cfg,
            self.seed,
            epoch,
            shuffle,
        )

    def validate(self) -> tuple[float, float]:
        with torch.inference_mode():
            self.model.eval()
            features = _in_chunks(
                self.model.features, self.val_images, self.device, lambda x: x.float() / 255.0
            )
        return _evaluate_head(
            self.model.head,
            features,
            self.val.targets.to(self.device),
            self.val.weights.to(self.device),
        )

    def final_features(self) -> tuple[None, None]:
        return None, None  # the tuned backbone's features were never computed


def _run_epochs(
    model: CrackClassifier,
    cfg: TrainParams,
    seed: int,
    fit: _CachedFit | _OnlineFit,
    on_epoch: Callable[[EpochRecord], None] | None,
) -> tuple[list[EpochRecord], int]:
    """Adam + StepLR over ``cfg.epochs``; the model ends with the weights of the best val epoch
    (best val accuracy, ties to the lower val loss). Returns the history and that epoch."""
    frozen = cfg.unfreeze == 0
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, cfg.lr_gamma)
    shuffle = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    best_state, best_key, best_epoch = None, (-math.inf, -math.inf), 0
    for epoch in progress(range(1, cfg.epochs + 1), desc="train", unit="epoch"):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = fit.epoch(epoch, optimizer, shuffle)
        val_loss, val_acc = fit.validate()
        scheduler.step()
        record = EpochRecord(
            epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start
        )
        history.append(record)
        if on_epoch:
            on_epoch(record)
        key = (val_acc, -val_loss)
        if key > best_key:
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(
                model.state_dict() if not frozen else model.head.state_dict()
            )
    assert best_state is not None
    (model.head if frozen else model).load_state_dict(best_state)
    return history, best_epoch


def _weighted_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy averaged with per-image weights (source balance)."""
    per_image = nn.functional.cross_entropy(logits, targets, reduction="none")
    return (per_image * weights).sum() / weights.sum()


def _head_epoch(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    shuffle: torch.Generator,
) -> tuple[float, float]:
    """One epoch over cached inputs; returns the weighted loss and accuracy."""
    head.train()
    total_loss, correct = 0.0, 0.0
    order = torch.randperm(len(features), generator=shuffle)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        logits = head(features[idx])
        loss = _weighted_loss(logits, targets[idx], weights[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * float(weights[idx].sum())
        correct += float(((logits.argmax(1) == targets[idx]).float() * weights[idx]).sum())
    return total_loss / float(weights.sum()), correct / float(weights.sum())


def _evaluate_head(
    head: nn.Module, features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[float, float]:
    """Weighted loss and accuracy (each source counts alike under source balance)."""
    head.eval()
    with torch.no_grad():  # in slices: trunk activations (cached fine-tuning) are large
        logits = torch.cat([head(features[i : i + 1024]) for i in range(0, len(features), 1024)])
        loss = _weighted_loss(logits, targets, weights).item()
        hits = (logits.argmax(1) == targets).float()
        acc = float((hits * weights).sum() / weights.sum())
    return loss, acc


def _finetune_epoch(
    model: CrackClassifier,
    trainable: list[nn.Module],
    images: torch.Tensor,
    split: _Split,
    optimizer: torch.optim.Optimizer,
    cfg: TrainParams,
    seed: int,
    epoch: int,
    shuffle: torch.Generator,
) -> tuple[float, float]:
    """One epoch of fine-tuning: fresh augmentation per image and epoch, backbone partly trained."""
    rows, targets, weights, plain = split.rows, split.targets, split.weights, split.plain
    device = model.mean.device
    model.eval()  # frozen blocks keep their BatchNorm statistics
    for unit in trainable:
        unit.train()
    model.head.train()
    total_loss, correct = 0.0, 0
    order = torch.randperm(len(images), generator=shuffle)
    for begin in range(0, len(order), cfg.batch_size):
        idx = order[begin : begin + cfg.batch_size]
        views = images[idx].clone()
        fresh = idx[~plain[idx]]  # plain rows are seen as they are
        if len(fresh):  # a batch of plain rows only has nothing to augment
            views[~plain[idx]] = augmented_views(
                images[fresh], [rows[i].sha256 for i in fresh.tolist()], cfg.augment, seed, epoch
            )
        batch = views.to(device).float().div_(255.0)
        logits = model(batch.contiguous(memory_format=torch.channels_last))
        loss = _weighted_loss(logits, targets[idx].to(device), weights[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * float(weights[idx].sum())
        hits = (logits.argmax(1).cpu() == targets[idx]).float()
        correct += float((hits * weights[idx]).sum())
    return total_loss / float(weights.sum()), correct / float(weights.sum())


def _in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    device: torch.device,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``fn`` over ``inputs`` in forward-pass chunks on ``device`` (bounded memory)."""
    outputs = []
    for begin in range(0, len(inputs), FORWARD_CHUNK):
        batch = inputs[begin : begin + FORWARD_CHUNK].to(device)
        batch = prepare(batch) if prepare else batch
        outputs.append(fn(batch.contiguous(memory_format=torch.channels_last)))
    return torch.cat(outputs)


class _Widen(nn.Module):
    """float16 trunk activations to float32 (exact), batch by batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def trunk_fn(model: CrackClassifier, trunk: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen trunk's activations of float RGB [0, 1] images, as float16: they are cached
    per image and view like features, and a trunk's maps are far larger than pooled features
    (lite0 before its last unit: 320x8x8), so half precision halves the cache and the memory
    the training views take. The tuned blocks see these rounded activations in training and
    validation (best epoch, temperature, threshold, OOD model); the saved model computes in
    float32, its features within ~1e-2 of them (tests/test_train.py)."""

    def activations(images: torch.Tensor) -> torch.Tensor:
        return trunk((images - model.mean) / model.std).half()

    return activations
