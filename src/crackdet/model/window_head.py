"""The window head: a crack probability for the 227-px window centred on every stride-32 cell of
one backbone pass over a whole photo.

The classifier pools its 1280-channel stride-32 map over a whole 227-px patch and reads the
mean with a small MLP. Over a photo's feature map the same window is the mean of the 7x7 cells
around a cell (7 x 32 = 224 px ≈ 227), so the head is that mean (an average pool, stride 1,
edges averaged over the cells that exist) and the classifier's MLP as 1x1 convolutions. It
starts from the trained classifier's head, on an isolated 224-px input its centre cell gives
the classifier's logits, and is then trained on features computed in context
(:mod:`crackdet.model.window_head_training`): inside a photo, a window's features also see its
neighbours and no padding, and the classifier's head on them agrees with isolated windows only
loosely. Checkpoints are a plain state dict (``window_head.pt``) plus :class:`WindowHeadSpec`
(``window_head.json``) beside the classifier's ``model.pt``; nothing is unpickled.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_bytes, write_json
from crackdet.model.classifier import checkpoint_bytes
from crackdet.model.dense import Taps

WINDOW_CELLS = 7  # a 227-px window over stride-32 cells: 7 x 32 = 224 px
WEIGHTS_FILE, SPEC_FILE = "window_head.pt", "window_head.json"


@dataclass(frozen=True)
class WindowHeadSpec:
    """Everything needed to rebuild a window head around its state dict (window_head.json)."""

    features: int  # channels of the stride-32 tap (lite0: 1280)
    hidden: int
    window_cells: int  # the pooled square's side in cells (odd: centred on its cell)
    temperature: float  # logits are divided by it (fitted on val windows in context)
    threshold: float  # operating threshold on P(crack)
    trained_on: str  # what the in-context training saw, in words ("" : the classifier's head)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> WindowHeadSpec:
        return cls(**data)  # type: ignore[arg-type]


class WindowHead(nn.Module):
    """Stride-32 tap → window mean (``window_cells`` square, stride 1) → 1x1 conv MLP → logits
    (N, 2, H/32, W/32), divided by the temperature (softmax channel 1 = P(crack))."""

    def __init__(self, features: int, hidden: int, window_cells: int = WINDOW_CELLS) -> None:
        super().__init__()
        if window_cells < 1 or window_cells % 2 == 0:
            raise CrackdetError(f"window head: window_cells must be odd, not {window_cells}")
        self.window_cells = window_cells
        # Edges average the cells that exist (count_include_pad=False): a window at the photo's
        # border is the part of it inside the photo, as the padding convention replicates edges.
        self.pool = nn.AvgPool2d(
            window_cells, stride=1, padding=window_cells // 2, count_include_pad=False
        )
        self.hidden = nn.Conv2d(features, hidden, 1)
        self.out = nn.Conv2d(hidden, 2, 1)
        self.register_buffer("temperature", torch.tensor(1.0))

    def pooled(self, taps: Taps) -> torch.Tensor:
        """Window means of the stride-32 tap, (N, C, H/32, W/32): what the MLP reads."""
        return self.pool(taps[-1])

    def raw_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of pooled features, (N, C, h, w) or (N, C)."""
        flat = pooled.dim() == 2
        x = pooled[:, :, None, None] if flat else pooled
        x = self.out(torch.relu(self.hidden(x)))
        return x[:, :, 0, 0] if flat else x

    def forward(self, taps: Taps) -> torch.Tensor:
        return self.raw_logits(self.pooled(taps)) / self.temperature

    @classmethod
    def from_classifier(
        cls, head: nn.Sequential, temperature: float, window_cells: int = WINDOW_CELLS
    ) -> WindowHead:
        """The classifier's head (Linear → ReLU → Dropout → Linear) as a window head."""
        first, last = head[0], head[-1]
        if not isinstance(first, nn.Linear) or not isinstance(last, nn.Linear):
            raise CrackdetError("window head: the classifier's head is not Linear … Linear")
        window = cls(first.in_features, first.out_features, window_cells)
        with torch.no_grad():
            window.hidden.weight.copy_(first.weight[:, :, None, None])
            window.hidden.bias.copy_(first.bias)
            window.out.weight.copy_(last.weight[:, :, None, None])
            window.out.bias.copy_(last.bias)
            window.temperature.fill_(float(temperature))
        return window


def build_window_head(spec: WindowHeadSpec) -> WindowHead:
    head = WindowHead(spec.features, spec.hidden, spec.window_cells)
    head.temperature.fill_(float(spec.temperature))
    return head


def save_window_head(folder: Path, head: WindowHead, spec: WindowHeadSpec) -> None:
    """``window_head.pt`` (state dict) and ``window_head.json`` (spec) into ``folder``, each
    written atomically; weights first, so a spec never names weights that are not there."""
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    write_bytes(folder / WEIGHTS_FILE, checkpoint_bytes(state))
    write_json(folder / SPEC_FILE, spec.to_dict())


def load_window_head(folder: Path) -> tuple[WindowHead, WindowHeadSpec] | None:
    """The window head saved in ``folder`` (eval mode), or None when the folder has none."""
    weights, spec_file = folder / WEIGHTS_FILE, folder / SPEC_FILE
    if not weights.exists() and not spec_file.exists():
        return None
    try:
        spec = WindowHeadSpec.from_dict(json.loads(spec_file.read_text()))
        head = build_window_head(spec)
    except FileNotFoundError:
        raise CrackdetError(
            f"{spec_file}: missing beside {weights.name}; rerun the train stage"
        ) from None
    except (OSError, ValueError, TypeError, CrackdetError) as exc:
        raise CrackdetError(
            f"{spec_file}: unreadable window head description ({first_line(exc)}); rerun the "
            "train stage"
        ) from None
    if weights.is_file() and not zipfile.is_zipfile(weights):
        raise CrackdetError(
            f"{weights}: not a checkpoint (not the zip archive torch.save writes); rerun the "
            "train stage"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        head.load_state_dict(state)
    except FileNotFoundError:
        raise CrackdetError(
            f"{weights}: missing beside {spec_file.name}; rerun the train stage"
        ) from None
    except pickle.UnpicklingError:
        raise CrackdetError(
            f"{weights}: not a valid window head (it holds pickled objects other than tensors, "
            "never executed: loaded with weights_only=True); rerun the train stage"
        ) from None
    except (RuntimeError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise CrackdetError(f"{weights}: not a valid window head ({first_line(exc)})") from None
    return head.eval(), spec
