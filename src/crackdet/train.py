"""Training: the blog's recipe (frozen ImageNet backbone + small head, Adam, StepLR, augmentation),
made deterministic, honest and cheap.

With the backbone frozen (``train.unfreeze: 0``, the default) an epoch is two separable steps: take
the backbone features of this epoch's view of every training image, then train the head on them.
Features come from :mod:`crackdet.features`: ``train.augment.views`` views per image (view 0 plain,
the others augmented from (seed, view, image sha256)), computed once and cached, and epochs cycle
through the views. The blog instead ran the backbone over freshly augmented images every epoch:
the same kind of augmentation at several times the cost.

With ``train.unfreeze: N > 0`` the last N backbone blocks are fine-tuned with the head (the device
is picked automatically). ``train.finetune: cached`` splits the backbone into a frozen trunk and
the tuned tail (:func:`crackdet.models.split_backbone`) and caches the trunk's activations of the
same views, so an epoch runs only the tail: one block of EfficientNet-Lite0 trains on a CPU.
``online`` augments afresh every epoch and runs the whole backbone each time (for a GPU). Either
way the probe baseline gets the pretrained backbone's features, computed before any weight moves.
In every mode the best epoch is chosen on val, never on test, and the same params and data give
identical numbers on a rerun.
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
from torch import nn

from crackdet.data import CLASSES, PATCH_SIZE, ManifestRow, load_rgb
from crackdet.errors import CrackdetError
from crackdet.models import (
    FORWARD_CHUNK,
    CrackClassifier,
    backbone_units,
    build_classifier,
    split_backbone,
)
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


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def load_images(images_dir: Path, rows: list[ManifestRow], size: int = PATCH_SIZE) -> torch.Tensor:
    """Images as one uint8 NCHW tensor (decoded once, reused every epoch)."""
    if not rows:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    batch = np.stack([load_rgb(images_dir / row.path, size) for row in rows])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def targets_of(rows: list[ManifestRow]) -> torch.Tensor:
    return torch.tensor([row.target for row in rows], dtype=torch.long)


def augment_image(
    image: torch.Tensor, params: AugmentParams, rng: np.random.Generator
) -> torch.Tensor:
    """One random view of a float CHW image in [0, 1]: rotation, flips, colour jitter."""
    # Imported here: evaluate and predict import this module but never augment, and torchvision
    # costs ~1.3 s of their start-up.
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

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


def _head_epoch(
    head: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    shuffle: torch.Generator,
) -> tuple[float, float]:
    head.train()
    total_loss, correct = 0.0, 0
    order = torch.randperm(len(features), generator=shuffle)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        logits = head(features[idx])
        loss = nn.functional.cross_entropy(logits, targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == targets[idx]).sum())
    return total_loss / len(features), correct / len(features)


def _evaluate_head(
    head: nn.Module, features: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():  # in slices: trunk activations (cached fine-tuning) are large
        logits = torch.cat([head(features[i : i + 1024]) for i in range(0, len(features), 1024)])
        loss = nn.functional.cross_entropy(logits, targets).item()
        acc = (logits.argmax(1) == targets).float().mean().item()
    return loss, acc


def _finetune_epoch(
    model: CrackClassifier,
    trainable: list[nn.Module],
    images: torch.Tensor,
    rows: list[ManifestRow],
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Params,
    epoch: int,
    shuffle: torch.Generator,
) -> tuple[float, float]:
    """One epoch of fine-tuning: fresh augmentation per image and epoch, backbone partly trained."""
    from crackdet.features import image_seed

    device = model.mean.device
    model.eval()  # frozen blocks keep their BatchNorm statistics
    for unit in trainable:
        unit.train()
    model.head.train()
    total_loss, correct = 0.0, 0
    order = torch.randperm(len(images), generator=shuffle)
    for begin in range(0, len(order), params.train.batch_size):
        idx = order[begin : begin + params.train.batch_size]
        batch = torch.stack(
            [
                augment_image(
                    images[i].float() / 255.0,
                    params.train.augment,
                    np.random.default_rng(image_seed(params.base.seed, epoch, rows[i].sha256)),
                )
                for i in idx.tolist()
            ]
        ).to(device)
        logits = model(batch.contiguous(memory_format=torch.channels_last))
        loss = nn.functional.cross_entropy(logits, targets[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1).cpu() == targets[idx]).sum())
    return total_loss / len(images), correct / len(images)


def train_model(
    params: Params,
    images_dir: Path,
    train_rows: list[ManifestRow],
    val_rows: list[ManifestRow],
    on_epoch: Callable[[EpochRecord], None] | None = None,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Train the classifier; the returned model holds the weights of the best val epoch.

    ``cache_dir``: where frozen-backbone features, and for ``finetune: cached`` the trunk's
    activations, are cached (None: compute, don't store).
    """
    from crackdet.engine import effective_engine, feature_fn
    from crackdet.features import FeatureCache, cache_key, features_for, onnx_dir

    cfg = params.train
    seed = params.base.seed
    set_determinism(seed)
    device = pick_device()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = build_classifier(
        cfg.backbone, cfg.pretrained, cfg.hidden, cfg.dropout, PATCH_SIZE, CLASSES, cfg.unfreeze
    )
    model = model.to(device=device, memory_format=torch.channels_last)
    units = backbone_units(model.backbone)
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
    timings["build_s"] = time.perf_counter() - clock

    train_targets, val_targets = targets_of(train_rows), targets_of(val_rows)
    frozen = cfg.unfreeze == 0
    clock = time.perf_counter()
    forwards = 0
    cached = frozen or cfg.finetune == "cached"
    if cached and not frozen:  # before any forward pass: an unknown split fails at once
        trunk, tail = split_backbone(model.backbone, cfg.unfreeze)
    engine = effective_engine(model, cfg.engine)
    extract = feature_fn(model, engine, onnx_dir(cache_dir))
    probe_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
    if not frozen and cfg.pretrained:
        # The probe baseline always sees the pretrained backbone's features, whatever is tuned;
        # computed before any weight changes (and shared with frozen runs through the cache).
        plain = FeatureCache(cache_dir, cache_key(model, None, seed, engine)) if cache_dir else None
        probe_train, n = features_for(model, images_dir, train_rows, 0, None, seed, plain, extract)
        probe_val, m = features_for(model, images_dir, val_rows, 0, None, seed, plain, extract)
        probe_inputs, forwards = (probe_train, probe_val), n + m
    # What trains on cached inputs: the head on pooled features (frozen), or the backbone's last
    # units + head on the frozen trunk's activations (finetune: cached).
    learner: nn.Module = model.head
    train_views: list[torch.Tensor] = []
    val_inputs = torch.zeros(0)
    dtype: type = np.float32
    if cached:
        if not frozen:
            # Trunk activations stay float16 in memory too; each batch is widened exactly.
            learner = nn.Sequential(_Widen(), tail, model.head)
            extract, dtype = trunk_fn(model, trunk), np.float16
        # Frozen: pooled features by the stage's engine. Cached fine-tuning: the trunk's
        # activations by PyTorch, keyed by how many units follow them.
        key_engine, key_units = (engine, 0) if frozen else ("torch", cfg.unfreeze)
        caches = (
            {
                view: FeatureCache(
                    cache_dir,
                    cache_key(model, cfg.augment if view else None, seed, key_engine, key_units),
                )
                for view in range(min(cfg.augment.views, 2))  # plain, and all augmented views
            }
            if cache_dir
            else {}
        )
        val_inputs, n = features_for(
            model, images_dir, val_rows, 0, None, seed, caches.get(0), extract, dtype
        )
        forwards += n
        for view in range(cfg.augment.views):
            features, n = features_for(
                model,
                images_dir,
                train_rows,
                view,
                cfg.augment if view else None,
                seed,
                caches.get(min(view, 1)),
                extract,
                dtype,
            )
            train_views.append(features.to(device))
            forwards += n
        val_inputs = val_inputs.to(device)
        train_images = val_images = None
    else:
        train_images = load_images(images_dir, train_rows)
        val_images = load_images(images_dir, val_rows)
    timings["features_s"] = time.perf_counter() - clock
    timings["forward_passes"] = forwards
    timings["images_per_s"] = forwards / timings["features_s"] if forwards else 0.0

    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, cfg.lr_gamma)
    shuffle = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    best_state, best_key, best_epoch = None, (-math.inf, -math.inf), 0
    clock = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        if cached:
            features = train_views[(epoch - 1) % len(train_views)]
            train_loss, train_acc = _head_epoch(
                learner, features, train_targets.to(device), optimizer, cfg.batch_size, shuffle
            )
            val_loss, val_acc = _evaluate_head(learner, val_inputs, val_targets.to(device))
        else:
            assert train_images is not None and val_images is not None
            train_loss, train_acc = _finetune_epoch(
                model,
                trainable,
                train_images,
                train_rows,
                train_targets,
                optimizer,
                params,
                epoch,
                shuffle,
            )
            with torch.inference_mode():
                model.eval()
                val_features = _in_chunks(
                    model.features, val_images, device, lambda x: x.float() / 255.0
                )
            val_loss, val_acc = _evaluate_head(model.head, val_features, val_targets.to(device))
        scheduler.step()
        record = EpochRecord(
            epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start
        )
        history.append(record)
        if on_epoch:
            on_epoch(record)
        key = (val_acc, -val_loss)  # best val accuracy; ties go to the lower val loss
        if key > best_key:
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(
                model.state_dict() if not frozen else model.head.state_dict()
            )
    timings["epochs_s"] = time.perf_counter() - clock
    assert best_state is not None
    if frozen:
        model.head.load_state_dict(best_state)
    else:
        model.load_state_dict(best_state)
    model.eval()
    train_features = val_features = None
    if frozen:
        train_features, val_features = train_views[0], val_inputs
        probe_inputs = (train_features.cpu(), val_features.cpu())
    elif cached:  # the tuned backbone's features, from the cached trunk activations
        with torch.inference_mode():
            train_features = _in_chunks(learner[:2], train_views[0], device)
            val_features = _in_chunks(learner[:2], val_inputs, device)
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
