"""Frozen-backbone feature cache (and the frozen trunk's activations for cached fine-tuning).

With a frozen backbone (the default recipe) the backbone's forward pass is the whole cost of
training, and its output for a given image and augmentation view never changes. Features are
therefore computed once and stored per image under a key made of everything that determines them:
backbone, its weights digest, preprocessing, library versions, and for augmented views the
augmentation params and seed. Changing head params, epochs or the optimizer reuses them.

Layout: ``<cache>/<key>/key.json`` and ``<cache>/<key>/v<view>/<sha[:2]>/<sha256>.npy`` (float32
features; float16 C×H×W activations for a trunk).
View 0 is the plain image; view v > 0 is an augmented view drawn from (seed, v, image sha256), so
a view of an image is the same whatever split or position the image is in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from crackdet.core.io import save_npy, write_json, write_with
from crackdet.core.params import AugmentParams
from crackdet.core.progress import progress
from crackdet.data.manifest import ManifestRow
from crackdet.model.augment import augment_image, image_seed
from crackdet.model.classifier import FORWARD_CHUNK, CrackClassifier
from crackdet.model.engines import FeatureFn, engine_label, graph_digest
from crackdet.model.inputs import load_images

STORE_EVERY = 256  # images per compute-and-store slice


class FeatureCache:
    """Per-image feature files for one backbone + preprocessing (+ augmentation) configuration."""

    def __init__(self, folder: Path, key: dict[str, object]) -> None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = folder / digest
        self.key = key
        if not (self.folder / "key.json").exists():
            write_json(self.folder / "key.json", key)

    def path(self, view: int, sha256: str) -> Path:
        return self.folder / f"v{view}" / sha256[:2] / f"{sha256}.npy"

    def load(self, view: int, sha256: str) -> np.ndarray | None:
        try:
            return np.load(self.path(view, sha256))
        except (OSError, ValueError):  # absent, or a torn file from a killed writer: recompute
            return None

    def store(self, view: int, sha256: str, feature: np.ndarray) -> None:
        write_with(self.path(view, sha256), lambda tmp: save_npy(feature, tmp))


def cache_key(
    model: CrackClassifier,
    augment: AugmentParams | None,
    seed: int,
    engine: str = "torch",
    trunk_units: int = 0,
) -> dict[str, object]:
    """What determines a cached array. ``trunk_units`` > 0: the arrays are the float16
    activations of the backbone without its last ``trunk_units`` units (cached fine-tuning)."""
    spec = model.spec
    key: dict[str, object] = {
        "backbone": spec.backbone,
        "weights": spec.weights,
        "patch_size": spec.patch_size,
        "mean": spec.mean,
        "std": spec.std,
        "resize": "bilinear",
        # Package metadata, not the packages: importing torchvision and timm costs seconds.
        "versions": [torch.__version__, version("torchvision"), version("timm")],
        # Engines differ (ONNX Runtime by ~1e-5, OpenVINO bf16 by a few per cent), so a cache
        # holds one engine's features only; the label carries version and precision.
        "engine": engine_label(engine),
    }
    if spec.weights == "random-init":  # no file names these weights: their digest does
        key["weights_digest"] = graph_digest(model.state_dict(), spec)
    device = model.mean.device.type
    if device != "cpu":  # CUDA kernels (TF32 convolutions) round otherwise
        key["device"] = device
    if trunk_units:
        key["trunk"] = {"without_last_units": trunk_units, "dtype": "float16"}
    if augment is not None:
        key["augment"] = {k: v for k, v in asdict(augment).items() if k != "views"}
        key["seed"] = seed
    return key


@torch.inference_mode()
def compute_features(
    model: CrackClassifier,
    images: torch.Tensor,
    shas: list[str],
    view: int,
    augment: AugmentParams | None,
    seed: int,
    extract: FeatureFn | None = None,
    done: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Backbone features of uint8 NCHW images for one view, in small channels-last chunks,
    computed by ``extract`` (an engine's feature function; default: ``model.features``);
    ``done(n)`` is told of every chunk of ``n`` images finished."""
    extract = extract or model.features
    model.backbone.eval()
    device = model.mean.device
    chunks = []
    for start in range(0, len(images), FORWARD_CHUNK):
        chunk = images[start : start + FORWARD_CHUNK]
        if view > 0 and augment is not None:
            chunk = augmented_views(chunk, shas[start : start + FORWARD_CHUNK], augment, seed, view)
        batch = chunk.to(device).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        chunks.append(extract(batch).cpu().numpy())
        if done is not None:
            done(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0, model.spec.num_features), np.float32)


def augmented_views(
    images: torch.Tensor, shas: list[str], augment: AugmentParams, seed: int, view: int
) -> torch.Tensor:
    """View ``view`` of uint8 NCHW images, each drawn from (seed, view, its sha256)."""
    if len(images) == 0:
        return images
    hwc = images.permute(0, 2, 3, 1).numpy()
    views = [
        augment_image(image, augment, np.random.default_rng(image_seed(seed, view, sha)))
        for image, sha in zip(hwc, shas, strict=True)
    ]
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous()


def features_for(
    model: CrackClassifier,
    images_dir: Path,
    rows: list[ManifestRow],
    view: int,
    augment: AugmentParams | None,
    seed: int,
    cache: FeatureCache | None,
    extract: FeatureFn | None = None,
    dtype: type = np.float32,
) -> tuple[torch.Tensor, int]:
    """Features (N, F) of ``rows`` for ``view`` (or a trunk's activations (N, C, H, W), as its
    ``extract`` returns them), as ``dtype``; computes and stores only what the cache lacks.

    Returns the features and how many images needed a forward pass.
    """
    found = [cache.load(view, row.sha256) if cache else None for row in rows]
    missing = [i for i, feature in enumerate(found) if feature is None]
    what = f"features, view {view}" if view else "features"
    # Compute and store in slices: a killed run keeps what it computed, and memory stays bounded.
    with progress(total=len(missing), desc=what, unit="img") as bar:
        for start in range(0, len(missing), STORE_EVERY):
            part = missing[start : start + STORE_EVERY]
            todo = [rows[i] for i in part]
            computed = compute_features(
                model,
                load_images(images_dir, todo),
                [r.sha256 for r in todo],
                view,
                augment,
                seed,
                extract,
                bar.update,
            )
            for i, feature in zip(part, computed, strict=True):
                found[i] = feature
                if cache:
                    cache.store(view, rows[i].sha256, feature)
    stacked = np.stack(found) if found else np.zeros((0, model.spec.num_features), np.float32)
    return torch.from_numpy(stacked.astype(dtype, copy=False)), len(missing)
