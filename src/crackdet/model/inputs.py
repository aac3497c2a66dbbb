"""Patches as tensors: the one place images of a manifest become model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crackdet.data.images import PATCH_SIZE, load_rgb
from crackdet.data.manifest import ManifestRow


def load_images(images_dir: Path, rows: list[ManifestRow], size: int = PATCH_SIZE) -> torch.Tensor:
    """Images as one uint8 NCHW tensor (decoded once, reused every epoch)."""
    if not rows:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    batch = np.stack([load_rgb(images_dir / row.path, size) for row in rows])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def targets_of(rows: list[ManifestRow]) -> torch.Tensor:
    return torch.tensor([row.target for row in rows], dtype=torch.long)
