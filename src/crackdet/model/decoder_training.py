"""Training the pixel decoder on the frozen backbone's taps, from photos with crack masks.

The photos: ``synthetic_photos`` crop-sized photos rendered from the seed (the renderer draws
every crack and so knows its pixels: the default pipeline's masks for free) and every masks
source's photos as fetch keeps them (``outputs/fetch/masks/<name>``), at each of the source's
scales. Photos are split into train and val (seeded, by photo: crops of one photo never sit on
both sides) and tiled into ``crop``-sized crops; the frozen trunk runs once per crop and its
taps are cached (fp16), so an epoch costs only the decoder. Flipping a crop together with its
cached taps is free augmentation: close to the taps of the flipped crop, not equal (strided
convolutions are not exactly flip-equivariant), so val crops are never flipped.

Loss: BCE (crack pixels weighted ``pos_weight``, planking pixels ``planking_weight``: the
wood grain of timber formwork is the hard negative) plus ``dice`` x soft Dice. Each epoch is
scored on val with :func:`crackdet.model.pixel_metrics.count_pixels` (2-px tolerance); the
best epoch by F1 is kept and its threshold chosen F1-optimal on val over a grid.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from crackdet.core.errors import CrackdetError
from crackdet.core.params import DecoderParams
from crackdet.data.sources.masks import find_photos, read_mask, read_photo_rgb
from crackdet.data.sources.synthetic import patch_rng, render_photo
from crackdet.data.windows import resize_photo
from crackdet.model.classifier import FORWARD_CHUNK
from crackdet.model.decoder import DECODERS, DecoderSpec
from crackdet.model.dense import DenseTrunk
from crackdet.model.pixel_metrics import PixelCounts, count_pixels

SYNTHETIC = "synthetic photos"  # how the rendered photos are named as a source
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


@dataclass(frozen=True)
class PixelPhoto:
    """One photo with its truth: crack and (optional) planking masks, bool HxW."""

    name: str  # unique: "<source>/<photo>@<scale>"
    source: str
    image: np.ndarray  # uint8 HxWx3 RGB
    crack: np.ndarray
    planking: np.ndarray | None


@dataclass(frozen=True)
class Crops:
    """Crops of photos, stacked: what the trunk sees and what the decoder must say."""

    images: torch.Tensor  # (N, 3, S, S) float [0, 1]
    crack: torch.Tensor  # (N, 1, S, S) float 0/1
    planking: torch.Tensor  # (N, 1, S, S) float 0/1 (planking and not crack)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class DecoderEpoch:
    """One epoch's figures (val: 2-px tolerant counts at threshold 0.5)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_precision: float
    val_recall: float
    val_f1: float
    val_planking: float  # share of val planking pixels called crack (0 when val has none)
    seconds: float


@dataclass(frozen=True)
class DecoderResult:
    decoder: nn.Module
    spec: DecoderSpec
    history: list[DecoderEpoch]
    best_epoch: int
    counts: PixelCounts  # val counts of the best epoch at the chosen threshold


# --------------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------------


def synthetic_photos(seed: int, count: int, side: int) -> list[PixelPhoto]:
    """``count`` rendered ``side`` x ``side`` photos with one crack system each, from ``seed``
    (independent of how many others are rendered)."""
    photos = []
    for index in range(count):
        image, mask = render_photo(patch_rng(seed, "decoder-photo", index), side, side, 1)
        name = f"{SYNTHETIC}/{index:05d}"
        photos.append(PixelPhoto(name, SYNTHETIC, image, mask > 0, None))
    return photos


def _resize_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """A bool mask resized by ``scale`` as the photo is; a thin crack stays (a pixel is crack
    where at least a quarter of it was, when shrinking)."""
    if scale == 1.0:
        return mask
    height, width = mask.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    soft = Image.fromarray(mask.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(soft) >= (0.5 if scale > 1 else 0.25)


def masks_photos(
    folder: Path, source: str, scales: Sequence[float], max_pixels: int
) -> list[PixelPhoto]:
    """A masks source's photos (``images/``, ``masks/``, ``masks_planking/``) at each scale.
    A source whose masks hold no crack pixel stops here, naming it: it would teach the decoder
    that nothing is a crack."""
    found, _ = find_photos(folder)
    photos = []
    for sample in found:
        image = read_photo_rgb(sample.image, max_pixels)
        crack = read_mask(sample.mask, image.shape[:2])
        planking = read_mask(sample.planking, image.shape[:2]) if sample.planking else None
        for scale in scales:
            photos.append(
                PixelPhoto(
                    f"{source}/{sample.name}@{scale:g}",
                    source,
                    resize_photo(image, scale),
                    _resize_mask(crack, scale),
                    None if planking is None else _resize_mask(planking, scale),
                )
            )
    if not any(p.crack.any() for p in photos):
        raise CrackdetError(
            f"fetch.sources.{source}: its masks hold no crack pixel, so the pixel decoder "
            f"cannot learn from it ({folder / 'masks'}); give it masks with crack pixels "
            "(any one non-zero value) or set train.decoder.enabled: false"
        )
    return photos


def split_photos(
    photos: list[PixelPhoto], val_share: float, seed: int
) -> tuple[list[PixelPhoto], list[PixelPhoto]]:
    """Seeded split by photo (every scale of a photo on one side), each source split alike."""
    train, val = [], []
    for source in sorted({p.source for p in photos}):
        mine = [p for p in photos if p.source == source]
        stems = sorted({p.name.split("@")[0] for p in mine})
        rng = np.random.default_rng([seed, len(stems)])
        order = rng.permutation(len(stems))
        n_val = min(len(stems) - 1, max(1, round(val_share * len(stems)))) if len(stems) > 1 else 0
        held = {stems[i] for i in order[:n_val]}
        for p in mine:
            (val if p.name.split("@")[0] in held else train).append(p)
    return train, val


def _starts(length: int, crop: int) -> list[int]:
    """Tile starts covering ``length``: a grid of ``crop`` steps, the last tile flush with the
    end (it overlaps its neighbour rather than hanging over the edge)."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, crop))
    return starts if starts[-1] + crop == length else [*starts, length - crop]


def _window(array: np.ndarray, tile: tuple[int, int, int], crop: int) -> np.ndarray:
    """The ``crop`` x ``crop`` window of a photo's array at the tile's corner; a photo smaller
    than a crop is edge-replicated up to it (masks: padded with False)."""
    _, y, x = tile
    part = array[y : y + crop, x : x + crop]
    pad = ((0, crop - part.shape[0]), (0, crop - part.shape[1]))
    if not any(p for _, p in pad):
        return part
    if array.dtype == bool:
        return np.pad(part, pad)
    return np.pad(part, (*pad, (0, 0)), mode="edge")


def cut_crops(photos: list[PixelPhoto], crop: int, limit: int = 0, seed: int = 0) -> Crops:
    """Every photo tiled into ``crop`` x ``crop`` crops (edge-replicated when smaller); with
    ``limit``, a seeded sample of that many: crops holding crack pixels first, up to three
    quarters of it."""
    tiles = [
        (k, y, x)
        for k, photo in enumerate(photos)
        for y in _starts(photo.crack.shape[0], crop)
        for x in _starts(photo.crack.shape[1], crop)
    ]
    if limit and len(tiles) > limit:
        cracked = [t for t in tiles if _window(photos[t[0]].crack, t, crop).any()]
        rest = sorted(set(tiles) - set(cracked))
        rng = np.random.default_rng([seed, len(tiles)])
        n_cracked = min(len(cracked), max(limit * 3 // 4, limit - len(rest)))
        chosen = [cracked[i] for i in rng.choice(len(cracked), n_cracked, replace=False)]
        chosen += [rest[i] for i in rng.choice(len(rest), limit - n_cracked, replace=False)]
        tiles = sorted(chosen)
    images, cracks, planks = [], [], []
    for tile in tiles:
        photo = photos[tile[0]]
        plank = photo.planking if photo.planking is not None else np.zeros_like(photo.crack)
        images.append(_window(photo.image, tile, crop))
        cracks.append(_window(photo.crack, tile, crop))
        planks.append(_window(plank, tile, crop) & ~cracks[-1])
    if not images:
        empty = torch.zeros(0, 1, crop, crop)
        return Crops(torch.zeros(0, 3, crop, crop), empty, empty)
    return Crops(
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0,
        torch.from_numpy(np.stack(cracks)).unsqueeze(1).float(),
        torch.from_numpy(np.stack(planks)).unsqueeze(1).float(),
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def cache_taps(trunk: DenseTrunk, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The trunk's taps of every crop, computed once in chunks, kept in fp16 (half the memory;
    the decoder reads them back as fp32)."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        for start in range(0, len(images), FORWARD_CHUNK):
            taps = trunk(images[start : start + FORWARD_CHUNK])
            chunks.append(tuple(t.to(torch.float16) for t in taps))
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


def _flip(tensors: Sequence[torch.Tensor], dims: list[int]) -> list[torch.Tensor]:
    return [torch.flip(t, dims) if dims else t for t in tensors]


def pixel_loss(
    logits: torch.Tensor,
    crack: torch.Tensor,
    planking: torch.Tensor,
    cfg: DecoderParams,
) -> torch.Tensor:
    """Weighted BCE (crack ``pos_weight``, planking ``planking_weight``, others 1) plus
    ``dice`` x soft Dice over the batch."""
    weight = 1.0 + (cfg.pos_weight - 1.0) * crack + (cfg.planking_weight - 1.0) * planking
    bce = F.binary_cross_entropy_with_logits(logits, crack, weight=weight)
    if cfg.dice == 0:
        return bce
    p = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (p * crack).sum() + 1.0) / (p.sum() + crack.sum() + 1.0)
    return bce + cfg.dice * dice


def _predict(
    decoder: nn.Module, taps: tuple[torch.Tensor, ...], crops: Crops, batch: int
) -> tuple[torch.Tensor, float]:
    """P(crack pixel) of every crop, and the mean loss (without weights' training tricks)."""
    probs, losses = [], []
    with torch.no_grad():
        for start in range(0, len(crops), batch):
            part = slice(start, start + batch)
            logits = decoder(tuple(t[part].float() for t in taps), crops.images[part])
            losses.append(
                F.binary_cross_entropy_with_logits(logits, crops.crack[part]).item() * len(logits)
            )
            probs.append(torch.sigmoid(logits))
    return torch.cat(probs), sum(losses) / max(len(crops), 1)


def score(probs: torch.Tensor, crops: Crops, threshold: float) -> PixelCounts:
    """2-px tolerant counts over the crops at ``threshold``."""
    total = PixelCounts()
    called = (probs >= threshold).numpy()[:, 0]
    truth = crops.crack.numpy()[:, 0] > 0
    planks = crops.planking.numpy()[:, 0] > 0
    for k in range(len(called)):
        total = total + count_pixels(called[k], truth[k], planks[k])
    return total


def best_threshold(probs: torch.Tensor, crops: Crops) -> tuple[float, PixelCounts]:
    """The F1-optimal threshold on ``crops`` over :data:`THRESHOLDS` (ties: the lower)."""
    best = (0.5, score(probs, crops, 0.5))
    for threshold in THRESHOLDS:
        counts = score(probs, crops, threshold)
        if (counts.f1 or 0.0) > (best[1].f1 or 0.0):
            best = (threshold, counts)
    return best


def train_decoder(
    trunk: DenseTrunk,
    train_photos: list[PixelPhoto],
    val_photos: list[PixelPhoto],
    cfg: DecoderParams,
    seed: int,
    on_epoch: Callable[[DecoderEpoch], None] | None = None,
) -> DecoderResult:
    """Train a decoder on ``train_photos``' crops over ``trunk``'s cached taps; best epoch and
    threshold on ``val_photos``."""
    train = cut_crops(train_photos, cfg.crop, cfg.max_crops, seed)
    val = cut_crops(val_photos, cfg.crop, cfg.max_crops, seed)
    if not train.crack.any():
        raise CrackdetError(
            "train.decoder: its training photos hold no crack pixel; raise "
            "train.decoder.synthetic_photos or add a masks source (fetch.sources)"
        )
    if not len(val):
        raise CrackdetError(
            "train.decoder: no photo is left for val; raise train.decoder.synthetic_photos or "
            "add photos to a masks source"
        )
    train_taps, val_taps = cache_taps(trunk, train.images), cache_taps(trunk, val.images)
    torch.manual_seed(seed)
    decoder = DECODERS[cfg.arch](tuple(t.shape[1] for t in train_taps), cfg.channels, cfg.full)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([seed, len(train)])
    history: list[DecoderEpoch] = []
    best_state, best_key = copy.deepcopy(decoder.state_dict()), (-1.0, 0.0)
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        decoder.train()
        order, total = rng.permutation(len(train)), 0.0
        for start in range(0, len(train), cfg.batch_size):
            idx = torch.from_numpy(order[start : start + cfg.batch_size])
            dims = [d for d in (2, 3) if cfg.flips and rng.random() < 0.5]
            taps = _flip([t[idx].float() for t in train_taps], dims)
            images, crack, planks = _flip(
                [train.images[idx], train.crack[idx], train.planking[idx]], dims
            )
            loss = pixel_loss(decoder(tuple(taps), images), crack, planks, cfg)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        decoder.eval()
        probs, val_loss = _predict(decoder, val_taps, val, cfg.batch_size)
        counts = score(probs, val, 0.5)
        record = DecoderEpoch(
            epoch=epoch,
            train_loss=total / len(train),
            val_loss=val_loss,
            val_precision=counts.precision or 0.0,
            val_recall=counts.recall or 0.0,
            val_f1=counts.f1 or 0.0,
            val_planking=counts.planking_called_share or 0.0,
            seconds=time.perf_counter() - started,
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if (record.val_f1, -record.val_loss) > best_key:
            best_key = (record.val_f1, -record.val_loss)
            best_state = copy.deepcopy(decoder.state_dict())
    decoder.load_state_dict(best_state)
    decoder.eval()
    best_epoch = max(history, key=lambda r: (r.val_f1, -r.val_loss)).epoch
    probs, _ = _predict(decoder, val_taps, val, cfg.batch_size)
    threshold, counts = best_threshold(probs, val)
    sources = tuple(dict.fromkeys(p.source for p in train_photos))
    spec = DecoderSpec(
        backbone=trunk.name,
        tap_channels=tuple(int(t.shape[1]) for t in train_taps),
        channels=cfg.channels,
        full=cfg.full,
        arch=cfg.arch,
        threshold=threshold,
        trained_on=sources,
        metrics={
            "val_precision": counts.precision or 0.0,
            "val_recall": counts.recall or 0.0,
            "val_f1": counts.f1 or 0.0,
            "val_planking": counts.planking_called_share or 0.0,
            "train_crops": float(len(train)),
            "val_crops": float(len(val)),
        },
    )
    return DecoderResult(decoder, spec, history, best_epoch, counts)
