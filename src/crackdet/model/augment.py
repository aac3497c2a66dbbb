"""Training-time augmentation: one random view of a patch, drawn from (seed, view, image).

A view depends only on the seed, the view number and the image's sha256, so the view of an image
is the same whatever split or position the image is in, and cached features of a view stay valid.
Besides the blog's rotation, flips and colour jitter, a view can show the patch as another
camera would: zoomed (cracks thinner or wider), blurred, noisy, JPEG-compressed, exposed
differently. Everything runs on uint8 HxWx3 arrays with numpy and Pillow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from crackdet.core.params import AugmentParams

ROTATION_MARGIN = 40  # mirrored border added before rotating, so no black corners come in
ZOOM_SHARE = 0.75  # the other views keep the patch's own scale


def image_seed(seed: int, view: int, sha256: str) -> list[int]:
    return [seed, view, int(sha256[:16], 16)]


def _zoom(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Out (< 1): shrink and mirror-pad back, cracks thinner with their context repeated; in
    (> 1): crop a part and enlarge it, cracks wider."""
    size = image.shape[0]
    if factor < 0.99:
        small = max(8, round(size * factor))
        shrunk = np.asarray(
            Image.fromarray(image).resize((small, small), Image.Resampling.BILINEAR)
        )
        pad = size - small
        top, left = int(rng.integers(0, pad + 1)), int(rng.integers(0, pad + 1))
        return np.pad(shrunk, ((top, pad - top), (left, pad - left), (0, 0)), mode="symmetric")
    if factor > 1.01:
        crop = max(8, round(size / factor))
        y, x = int(rng.integers(0, size - crop + 1)), int(rng.integers(0, size - crop + 1))
        part = Image.fromarray(image[y : y + crop, x : x + crop])
        return np.asarray(part.resize((size, size), Image.Resampling.BILINEAR))
    return image


def augment_image(image: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """One random view of a uint8 HxWx3 patch (the same size comes back)."""
    size = image.shape[0]
    low_zoom, high_zoom = params.zoom
    if (low_zoom, high_zoom) != (1.0, 1.0) and rng.random() < ZOOM_SHARE:
        image = _zoom(image, float(np.exp(rng.uniform(np.log(low_zoom), np.log(high_zoom)))), rng)
    if params.rotation > 0:
        angle = float(rng.uniform(-params.rotation, params.rotation))
        m = ROTATION_MARGIN
        padded = Image.fromarray(np.pad(image, ((m, m), (m, m), (0, 0)), mode="symmetric"))
        image = np.asarray(padded.rotate(angle, Image.Resampling.BILINEAR))[
            m : m + size, m : m + size
        ]
    if params.rot90 and rng.random() < 0.5:
        image = np.rot90(image, int(rng.integers(1, 4)))
    if params.hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    if params.vflip and rng.random() < 0.5:
        image = image[::-1]
    pixels = np.ascontiguousarray(image).astype(np.float32)
    if params.color_jitter > 0:
        low, high = 1 - params.color_jitter, 1 + params.color_jitter
        pixels *= rng.uniform(low, high)  # brightness
        mean = pixels.mean()
        pixels = (pixels - mean) * rng.uniform(low, high) + mean  # contrast
        grey = pixels.mean(axis=2, keepdims=True)
        pixels = grey + (pixels - grey) * rng.uniform(low, high)  # saturation
    if params.exposure > 0:
        gamma = float(np.exp(rng.uniform(-params.exposure, params.exposure)))
        pixels = 255.0 * (np.clip(pixels, 0, 255) / 255.0) ** gamma
    if params.grayscale > 0 and rng.random() < params.grayscale:
        pixels = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2)
    out = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
    if params.blur > 0 and rng.random() < 0.5:
        radius = float(rng.uniform(0.3, params.blur))
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(radius)))
    if params.noise > 0 and rng.random() < 0.5:
        noise = rng.normal(0, rng.uniform(1.0, params.noise), out.shape[:2])[..., None]
        out = np.clip(out + noise + 0.5, 0, 255).astype(np.uint8)
    low_q, high_q = params.jpeg_quality
    if low_q < 100 and rng.random() < 0.5:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, "JPEG", quality=int(rng.integers(low_q, high_q + 1)))
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return out
