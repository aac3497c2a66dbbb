"""Sliding windows over a photo: the one tiling crack maps use and the masks source cuts its
training windows with, so a model is trained on exactly the windows it later maps."""

from __future__ import annotations

import numpy as np
from PIL import Image


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Starts covering [0, length): stride from the overlap, last window flush with the end."""
    if length <= window:
        return [0]
    stride = max(1, round(window * (1.0 - overlap)))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def resize_photo(photo: np.ndarray, scale: float) -> np.ndarray:
    """Rescale so one window covers what a training patch covered (``predict.scale``)."""
    if scale == 1.0:
        return photo
    height, width = photo.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))


def pad_to_window(photo: np.ndarray, window: int) -> np.ndarray:
    """A photo smaller than a window, edge-replicated up to it (rather than rejected)."""
    pad_h, pad_w = max(0, window - photo.shape[0]), max(0, window - photo.shape[1])
    if not (pad_h or pad_w):
        return photo
    return np.pad(photo, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def window_grid(height: int, width: int, window: int, overlap: float) -> list[tuple[int, int]]:
    """(y, x) of every window over an image of this size, row by row."""
    return [
        (y, x)
        for y in window_starts(height, window, overlap)
        for x in window_starts(width, window, overlap)
    ]
