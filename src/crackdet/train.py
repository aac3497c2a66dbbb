"""Training: the blog's recipe (frozen ImageNet backbone + small head, Adam, StepLR, augmentation),
made deterministic, honest and cheap.

With the backbone frozen (``train.unfreeze: 0``, the default) an epoch is two separable steps: take
the backbone features of this epoch's view of every training image, then train the head on them.
Features come from :mod:`crackdet.features`: ``train.augment.views`` views per image (view 0 plain,
the others augmented from (seed, view, image sha256)), computed once and cached, and epochs cycle
through the views. The blog instead ran the backbone over freshly augmented images every epoch:
the same kind of augmentation at several times the cost.

With ``train.unfreeze: N > 0`` the last N backbone blocks are fine-tuned (for users with a GPU;
the device is picked automatically): images are augmented on the fly every epoch and nothing is
cached. In both modes the best epoch is chosen on val, never on test, and the same params and data
give identical numbers on a rerun.
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
    # Frozen mode only: val features of the plain images (for the probe baseline and reports).
    val_features: torch.Tensor | None = None
    train_features: torch.Tensor | None = None

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


def backbone_units(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in order, so that ``train.unfreeze: N`` can free the last N."""
    if hasattr(backbone, "blocks"):  # timm EfficientNet family: stages, then the 1x1 head conv
        return [*backbone.blocks, nn.ModuleList([backbone.conv_head, backbone.bn2])]
    if hasattr(backbone, "layer4"):  # torchvision ResNets
        return [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    if hasattr(backbone, "features"):  # torchvision MobileNet / EfficientNet / ConvNeXt
        return list(backbone.features)
    raise CrackdetError(f"train.unfreeze: no block structure known for {type(backbone).__name__}")


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
    with torch.no_grad():
        logits = head(features)
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

    ``cache_dir``: where frozen-backbone features are cached (None: compute, don't store).
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
    train_views: list[torch.Tensor] = []
    if frozen:
        engine = effective_engine(model, cfg.engine)
        extract = feature_fn(model, engine, onnx_dir(cache_dir))
        plain = FeatureCache(cache_dir, cache_key(model, None, seed, engine)) if cache_dir else None
        augmented = (
            FeatureCache(cache_dir, cache_key(model, cfg.augment, seed, engine))
            if cache_dir and cfg.augment.views > 1
            else None
        )
        val_features, n = features_for(model, images_dir, val_rows, 0, None, seed, plain, extract)
        forwards += n
        for view in range(cfg.augment.views):
            features, n = features_for(
                model,
                images_dir,
                train_rows,
                view,
                cfg.augment if view else None,
                seed,
                augmented if view else plain,
                extract,
            )
            train_views.append(features.to(device))
            forwards += n
        val_features = val_features.to(device)
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
        if frozen:
            features = train_views[(epoch - 1) % len(train_views)]
            train_loss, train_acc = _head_epoch(
                model.head, features, train_targets.to(device), optimizer, cfg.batch_size, shuffle
            )
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
                val_features = torch.cat(
                    [
                        model.features(
                            (
                                val_images[i : i + FORWARD_CHUNK].to(device).float() / 255.0
                            ).contiguous(memory_format=torch.channels_last)
                        )
                        for i in range(0, len(val_images), FORWARD_CHUNK)
                    ]
                )
        scheduler.step()
        val_loss, val_acc = _evaluate_head(model.head, val_features, val_targets.to(device))
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
    model = model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model,
        history,
        best_epoch,
        timings,
        val_features=val_features.cpu() if frozen else None,
        train_features=train_views[0].cpu() if frozen else None,
    )
