"""Training-time augmentation: one random view of a patch, drawn from (seed, view, image).

A view depends only on the seed, the view number and the image's sha256, so the view of an image
is the same whatever split or position the image is in, and cached features of a view stay valid.
"""

from __future__ import annotations

import numpy as np
import torch

from crackdet.core.params import AugmentParams


def image_seed(seed: int, view: int, sha256: str) -> list[int]:
    return [seed, view, int(sha256[:16], 16)]


def augment_image(
    image: torch.Tensor, params: AugmentParams, rng: np.random.Generator
) -> torch.Tensor:
    """One random view of a float CHW image in [0, 1]: rotation, flips, colour jitter."""
    # torchvision costs ~1.3 s of start-up, which evaluate and predict never need.
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
