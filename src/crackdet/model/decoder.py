"""The pixel decoder: a crack probability per pixel from the frozen backbone's taps.

Cracks are 1-5 px wide: the stride-4 features alone blur them over several pixels, so a
decoder climbs the taps top-down (FPN-like: each tap projected to ``channels`` by a 1x1
convolution, upsampled x2 bilinearly and added to the next finer one), fuses the result with
the stride-2 tap, and reads the image itself for the dark 1-px line the coarse features can only
locate to a few pixels. Architectures differ in how that last step reaches full resolution; each
is one class registered by name (:func:`register_decoder`, ``train.decoder.arch``; the schema's
copy of the names is ``crackdet.core.params.DECODERS``, checked by tests/test_registries.py):

- ``subpixel`` (default): everything at stride 2. The image enters as its 2x2 pixel blocks
  (space-to-depth: 12 channels, nothing lost), and the last 1x1 convolution gives 4 logits per
  stride-2 cell, one per pixel (depth-to-space, the sub-pixel convolution of ESPCN). No
  intermediate tensor has the photo's size, only the input and the logits: on a 12 MP photo it
  adds 0.64 s to the dense pass where ``fullres`` added 0.9-1.5 s (bench/speed/dense_speed.py,
  ONNX Runtime, 2-core Xeon with AVX-512), at the same crack-pixel F1 on the UAV75 bench's
  choice photos (0.772 against 0.775; docs/results.md).
- ``fullres``: upsample to full resolution and fuse there with a 3x3 branch over the image
  (full-size tensors of ``full`` channels: memory-bound on a CPU). Checkpoints without an
  ``arch`` are this one.

Arithmetic per input pixel, lite0 taps (16, 24, 40, 112, 1280 channels at strides 2..32),
``channels`` C = 16 (weights only, biases left out; :func:`macs_per_pixel` counts the same
figure from the module, and a test holds them together):

- shared: 1x1 projections 16·C/4 + 24·C/16 + 40·C/64 + 112·C/256 + 1280·C/1024 = 64 + 24 +
  10 + 7 + 20 = 125; 3x3 smoothing at strides 8 and 4: 9·C²/64 + 9·C²/16 = 36 + 144 = 180;
  stride 2: a depthwise 3x3 and a 1x1 C→C: (9·C + C²)/4 = 100;
- ``subpixel``, ``full`` F = 16, at stride 2: 1x1 C→F (64), the image's 3x3 12→F (432), a 3x3
  F→F (576), the 1x1 F→4 output (16): 1,088; in all about 1.49 k;
- ``fullres``, F = 8, at full resolution: the image's 3x3 3→F (216), the stride-2 features'
  1x1 C→F after the upsample (128), a 3x3 F→F (576), the 1x1 F→1 output (8): 928; in all
  about 1.33 k.

Either is about a third of lite0's ~4 k. Only bilinear ``interpolate(scale_factor=2)``,
pixel (un)shuffles, convolutions, ReLU and additions: ONNX opset 17 and TorchScript export them
with dynamic H/W.

Checkpoints: ``decoder.pt`` (a plain state dict, loaded with ``weights_only=True``) and
``decoder.json`` (:class:`DecoderSpec`), beside model.pt in the model folder.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_bytes, write_json

WEIGHTS, SPEC = "decoder.pt", "decoder.json"
STRIDES = (2, 4, 8, 16, 32)  # the taps' strides (crackdet.model.dense.Taps)
PRIOR_LOGIT = -3.0  # sigmoid: ~5 %


@dataclass(frozen=True)
class DecoderSpec:
    """What rebuilds a decoder around its state dict, and what it was trained on."""

    backbone: str
    tap_channels: tuple[int, ...]  # channels of the taps at strides 2, 4, 8, 16, 32
    channels: int = 16  # the top-down path's width
    full: int = 8  # the image branch's width
    threshold: float = 0.5  # operating threshold on P(crack pixel), F1-optimal on val
    trained_on: tuple[str, ...] = ()  # the masks sources (and synthetic photos) it learnt from
    metrics: dict[str, float] = field(default_factory=dict)  # the best epoch's val figures
    arch: str = "fullres"  # a name in DECODERS; a description without one is fullres

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


# A decoder: built from (tap channels, channels, full); ``forward(taps, images)`` → crack
# logits (N, 1, H, W), images float RGB [0, 1] NCHW.
Decoder = Callable[[tuple[int, ...], int, int], nn.Module]
DECODERS: dict[str, Decoder] = {}


def register_decoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register the decorated decoder class under ``name`` (``train.decoder.arch``)."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if name in DECODERS:
            raise ValueError(f"decoder {name} registered twice")
        DECODERS[name] = cls
        return cls

    return register


class TopDown(nn.Module):
    """The taps climbed top-down to stride 2 (what every architecture shares)."""

    def __init__(self, tap_channels: tuple[int, ...], channels: int) -> None:
        super().__init__()
        if len(tap_channels) != len(STRIDES):
            raise ValueError(f"expected {len(STRIDES)} taps, got {len(tap_channels)}")
        c = channels
        self.project = nn.ModuleList(nn.Conv2d(n, c, 1) for n in tap_channels)
        self.smooth8 = nn.Conv2d(c, c, 3, padding=1)
        self.smooth4 = nn.Conv2d(c, c, 3, padding=1)
        self.depthwise2 = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.point2 = nn.Conv2d(c, c, 1)

    def fusing(self, channels: int, image: int, full: int, logits: int) -> None:
        """The layers that fuse the climbed features with the image: ``lift`` (features to
        ``full`` wide), ``image`` (a 3x3 over ``image`` image channels), ``fuse`` (3x3) and
        ``out`` (``logits`` per position), created in this order (the state dict's and the
        seeded initialisation's)."""
        self.lift = nn.Conv2d(channels, full, 1)
        self.image = nn.Conv2d(image, full, 3, padding=1)
        self.fuse = nn.Conv2d(full, full, 3, padding=1)
        self.out = nn.Conv2d(full, logits, 1)
        # Start near the crack prior (a few % of pixels), not at P = 0.5 everywhere: the first
        # steps then learn where cracks are instead of that most pixels are none.
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)

    def climb(self, taps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Features at stride 2, ``channels`` wide."""
        p2, p4, p8, p16, p32 = (proj(t) for proj, t in zip(self.project, taps, strict=True))
        x = p16 + _up(p32)
        x = F.relu(self.smooth8(p8 + _up(x)))
        x = F.relu(self.smooth4(p4 + _up(x)))
        return F.relu(self.point2(self.depthwise2(p2 + _up(x))))


@register_decoder("subpixel")
class SubpixelDecoder(TopDown):
    """Fused with the image's 2x2 blocks at stride 2; 4 logits per cell, one per pixel."""

    def __init__(self, tap_channels: tuple[int, ...], channels: int = 16, full: int = 16) -> None:
        super().__init__(tap_channels, channels)
        self.fusing(channels, image=3 * 4, full=full, logits=4)  # a 2x2 block's pixels

    def forward(self, taps: tuple[torch.Tensor, ...], images: torch.Tensor) -> torch.Tensor:
        blocks = F.pixel_unshuffle(images - 0.5, 2)
        x = F.relu(self.lift(self.climb(taps)) + self.image(blocks))
        return F.pixel_shuffle(self.out(F.relu(self.fuse(x))), 2)


@register_decoder("fullres")
class PixelDecoder(TopDown):
    """Upsampled to full resolution and fused there with a 3x3 branch over the image."""

    def __init__(self, tap_channels: tuple[int, ...], channels: int = 16, full: int = 8) -> None:
        super().__init__(tap_channels, channels)
        self.fusing(channels, image=3, full=full, logits=1)

    def forward(self, taps: tuple[torch.Tensor, ...], images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.lift(_up(self.climb(taps))) + self.image(images - 0.5))
        return self.out(F.relu(self.fuse(x)))


def build_decoder(spec: DecoderSpec) -> nn.Module:
    if spec.arch not in DECODERS:
        raise ValueError(f"unknown decoder arch {spec.arch!r} (known: {', '.join(DECODERS)})")
    return DECODERS[spec.arch](spec.tap_channels, spec.channels, spec.full)


def macs_per_pixel(decoder: nn.Module, side: int = 64) -> float:
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


def save_decoder(folder: Path, decoder: nn.Module, spec: DecoderSpec) -> None:
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


def load_decoder(folder: Path) -> tuple[nn.Module, DecoderSpec] | None:
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
