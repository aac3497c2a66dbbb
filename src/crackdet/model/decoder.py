"""The pixel decoder: a crack probability per pixel from the frozen backbone's taps.

Cracks are 1-5 px wide: the stride-4 features alone blur them over several pixels, so the
decoder climbs the taps top-down (FPN-like: each tap projected to ``channels`` by a 1x1
convolution, upsampled x2 bilinearly and added to the next finer one), fuses the result with
the stride-2 tap and, at full resolution, with a tiny branch that reads the image itself (the
dark 1-px line the coarse features can only locate to a few pixels).

Arithmetic per input pixel, lite0 taps (16, 24, 40, 112, 1280 channels at strides 2..32),
``channels`` C = 16, ``full`` F = 8 (weights only, biases left out; :func:`macs_per_pixel`
counts the same figure from the module, and a test holds them together):

- 1x1 projections: 16·C/4 + 24·C/16 + 40·C/64 + 112·C/256 + 1280·C/1024 = 64 + 24 + 10 + 7
  + 20 = 125;
- 3x3 smoothing at strides 8 and 4: 9·C²/64 + 9·C²/16 = 36 + 144 = 180;
- stride 2: a depthwise 3x3 and a 1x1 C→C: (9·C + C²)/4 = 100;
- full resolution: the image branch 3x3 3→F (216), the stride-2 features 1x1 C→F after the
  upsample (128), a 3x3 F→F (576) and the 1x1 F→1 output (8): 928.

About 1.33 k MACs per pixel, a third of lite0's ~4 k: most of it is the full-resolution 3x3,
what separates a crack's two edges from each other. Only ``interpolate(scale_factor=2)``,
convolutions, ReLU and additions: ONNX opset 17 and TorchScript export it with dynamic H/W.

Checkpoints: ``decoder.pt`` (a plain state dict, loaded with ``weights_only=True``) and
``decoder.json`` (:class:`DecoderSpec`), beside model.pt in the model folder.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_bytes, write_json

WEIGHTS, SPEC = "decoder.pt", "decoder.json"
STRIDES = (2, 4, 8, 16, 32)
PRIOR_LOGIT = -3.0  # sigmoid: ~5 %  # the taps' strides (crackdet.model.dense.Taps)


@dataclass(frozen=True)
class DecoderSpec:
    """What rebuilds a decoder around its state dict, and what it was trained on."""

    backbone: str
    tap_channels: tuple[int, ...]  # channels of the taps at strides 2, 4, 8, 16, 32
    channels: int = 16  # the top-down path's width
    full: int = 8  # the full-resolution branch's width
    threshold: float = 0.5  # operating threshold on P(crack pixel), F1-optimal on val
    trained_on: tuple[str, ...] = ()  # the masks sources (and synthetic photos) it learnt from
    metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's val figures

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DecoderSpec:
        fields = dict(data)
        for key in ("tap_channels", "trained_on"):
            fields[key] = tuple(fields[key])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class PixelDecoder(nn.Module):
    """``forward(taps, images)`` → crack logits (N, 1, H, W); images float RGB [0, 1] NCHW."""

    def __init__(self, tap_channels: tuple[int, ...], channels: int = 16, full: int = 8) -> None:
        super().__init__()
        if len(tap_channels) != len(STRIDES):
            raise ValueError(f"expected {len(STRIDES)} taps, got {len(tap_channels)}")
        c = channels
        self.project = nn.ModuleList(nn.Conv2d(n, c, 1) for n in tap_channels)
        self.smooth8 = nn.Conv2d(c, c, 3, padding=1)
        self.smooth4 = nn.Conv2d(c, c, 3, padding=1)
        self.depthwise2 = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.point2 = nn.Conv2d(c, c, 1)
        self.lift = nn.Conv2d(c, full, 1)
        self.image = nn.Conv2d(3, full, 3, padding=1)
        self.fuse = nn.Conv2d(full, full, 3, padding=1)
        self.out = nn.Conv2d(full, 1, 1)
        # Start near the crack prior (a few % of pixels), not at P = 0.5 everywhere: the first
        # steps then learn where cracks are instead of that most pixels are none.
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)

    def forward(self, taps: tuple[torch.Tensor, ...], images: torch.Tensor) -> torch.Tensor:
        p2, p4, p8, p16, p32 = (proj(t) for proj, t in zip(self.project, taps, strict=True))
        x = p16 + _up(p32)
        x = F.relu(self.smooth8(p8 + _up(x)))
        x = F.relu(self.smooth4(p4 + _up(x)))
        x = F.relu(self.point2(self.depthwise2(p2 + _up(x))))
        x = F.relu(self.lift(_up(x)) + self.image(images - 0.5))
        return self.out(F.relu(self.fuse(x)))


def build_decoder(spec: DecoderSpec) -> PixelDecoder:
    return PixelDecoder(spec.tap_channels, spec.channels, spec.full)


def macs_per_pixel(decoder: PixelDecoder, side: int = 64) -> float:
    """Multiply-accumulates per input pixel of every convolution (weights only), counted by
    running the decoder on random taps of a ``side`` x ``side`` image."""
    counted = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal counted
        assert isinstance(module, nn.Conv2d)
        per_output = module.in_channels // module.groups * module.kernel_size[0] ** 2
        counted += per_output * output.numel()

    hooks = [m.register_forward_hook(count) for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    try:
        channels = [m.in_channels for m in decoder.project]  # type: ignore[union-attr]
        taps = tuple(
            torch.zeros(1, n, side // s, side // s) for n, s in zip(channels, STRIDES, strict=True)
        )
        with torch.no_grad():
            decoder(taps, torch.zeros(1, 3, side, side))
    finally:
        for hook in hooks:
            hook.remove()
    return counted / side**2


def save_decoder(folder: Path, decoder: PixelDecoder, spec: DecoderSpec) -> None:
    """``decoder.pt`` and ``decoder.json`` into ``folder`` (atomic writes)."""
    buffer = io.BytesIO()  # through a handle: equal weights give equal bytes (checkpoint_bytes)
    torch.save(decoder.state_dict(), buffer)
    write_bytes(folder / WEIGHTS, buffer.getvalue())
    write_json(folder / SPEC, spec.to_dict())


def save_no_decoder(folder: Path) -> None:
    """The files of a model trained without a decoder (``train.decoder.enabled: false``): an
    empty description and state dict, so the stage's outputs always exist and a decoder left
    from an earlier run is not taken for this model's."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    write_bytes(folder / WEIGHTS, buffer.getvalue())
    write_json(folder / SPEC, {})


def load_decoder(folder: Path) -> tuple[PixelDecoder, DecoderSpec] | None:
    """The decoder saved in ``folder`` (eval mode); None when the folder has none or the
    model was trained without one. A file that is there but unreadable stops with one line
    naming it."""
    weights, spec_file = folder / WEIGHTS, folder / SPEC
    if not weights.exists() and not spec_file.exists():
        return None
    hint = "rerun the train stage with train.decoder.enabled: true, or delete it"
    try:
        data = json.loads(spec_file.read_text())
        if data == {}:
            return None
        spec = DecoderSpec.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CrackdetError(
            f"{spec_file}: unreadable decoder description ({first_line(exc)}); {hint}"
        ) from None
    if not weights.is_file() or not zipfile.is_zipfile(weights):
        raise CrackdetError(f"{weights}: missing or not a torch checkpoint; {hint}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        decoder = build_decoder(spec)
        decoder.load_state_dict(state)
    except pickle.UnpicklingError:
        raise CrackdetError(
            f"{weights}: holds pickled objects other than tensors (never executed); {hint}"
        ) from None
    except (RuntimeError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise CrackdetError(f"{weights}: not a valid decoder ({first_line(exc)}); {hint}") from None
    return decoder.eval(), spec
