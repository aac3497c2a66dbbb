"""One backbone pass per photo: multi-depth features, and the heads that read them densely.

The classifier sees one 227-px window per forward pass; a crack map of a 12 MP photo at scale 1
is ~900 overlapping windows, each pixel through the backbone about four times. A
:class:`DenseModel` runs the frozen backbone once over a whole (scaled) photo or a large tile
of it and reads two things from that one pass:

- a **window map**: a crack probability for the window centred on every stride-32 cell (the
  window head, trained on features computed in context: a window's features inside a photo are
  not those of the same window cut out and padded);
- **crack pixels**: a crack probability per pixel, from a light decoder over several depths.

:class:`DenseTrunk` gives the depths (:data:`Taps`): the backbone registers which of its
stages to tap (``taps`` in :func:`crackdet.model.backbones.register_backbone`). Heads are any
module taking the taps (the window head) or the taps and the image (the decoder); a model
without a head returns None in its place, so the runtime and its tests need not wait for a
trained head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crackdet.model.backbones import backbone_taps

Taps = tuple[torch.Tensor, ...]  # features at strides 2, 4, 8, 16, 32 (the last: 1280-ch head)
STRIDE = 32  # the coarsest tap's stride: one window-map cell per 32 px


class DenseTrunk(nn.Module):
    """The frozen backbone, normalising inside as ``CrackClassifier.features`` does, giving its
    registered taps instead of one pooled vector."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.taps = backbone_taps(name)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> Taps:
        """Float RGB [0, 1] NCHW (sides multiples of :data:`STRIDE`) → the taps."""
        return tuple(self.taps(self.backbone, (images - self.mean) / self.std))


@dataclass(frozen=True)
class DenseOutput:
    """Logits of one dense pass: ``window`` (N, 2, H/32, W/32), calibrated as the classifier's
    (softmax channel 1 = P(crack)); ``pixels`` (N, 1, H, W), sigmoid = P(crack pixel)."""

    window: torch.Tensor | None
    pixels: torch.Tensor | None


class DenseModel(nn.Module):
    """Trunk + window head + pixel decoder: one backbone pass, both maps."""

    def __init__(
        self,
        trunk: DenseTrunk,
        window_head: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.window_head = window_head
        self.decoder = decoder

    def forward(self, images: torch.Tensor) -> DenseOutput:
        taps = self.trunk(images)
        window = self.window_head(taps) if self.window_head is not None else None
        pixels = self.decoder(taps, images) if self.decoder is not None else None
        return DenseOutput(window, pixels)
