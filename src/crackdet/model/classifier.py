"""The crack classifier: a backbone, a small head and the calibration that travels with it.

The classifier takes float RGB in [0, 1], NCHW, and normalises inside the model, so every consumer
(evaluate, predict, a model pulled from the registry) feeds it the same thing and a colour-order or
normalisation mix-up cannot creep in between training and prediction. Checkpoints are plain state
dicts (``model.pt``) plus the :class:`ModelSpec` (``model.json``); nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.model.backbones import build_backbone
from crackdet.model.engines import GRAPH_ENGINES, graph_file, open_graph

# Backbone forward passes on CPU run fastest in small channels-last batches (cache-resident
# activations): measured ~90 img/s at 8-16 images vs ~45 at 64 on 2 cores for lite0.
FORWARD_CHUNK = 16


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network around a state dict (saved as model.json)."""

    backbone: str
    num_features: int
    hidden: int
    dropout: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    classes: tuple[str, ...]
    weights: str  # where the backbone's initial weights came from, with their sha256
    unfrozen_blocks: int = 0  # 0: backbone weights are exactly ``weights`` (features cacheable)
    threshold: float = (
        0.5  # operating threshold on P(crack), chosen on val (crackdet.model.calibrate)
    )
    temperature: float = 1.0  # logits are divided by it (temperature scaling fitted on val)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelSpec:
        fields = dict(data)
        for key in ("mean", "std", "classes"):
            fields[key] = tuple(fields[key])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


class CrackClassifier(nn.Module):
    """Backbone → head (Linear → ReLU → Dropout → Linear → 2 logits: Negative, Positive)."""

    def __init__(self, backbone: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(spec.num_features, spec.hidden),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, len(spec.classes)),
        )
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(float(spec.temperature)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (divided by the temperature fitted on val)."""
        return self.head(features) / self.temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(images))


def build_classifier(
    backbone_name: str,
    pretrained: bool,
    hidden: int,
    dropout: float,
    patch_size: int,
    classes: tuple[str, ...],
    unfrozen_blocks: int = 0,
) -> CrackClassifier:
    backbone, width, source, mean, std = build_backbone(backbone_name, pretrained)
    spec = ModelSpec(
        backbone_name,
        width,
        hidden,
        dropout,
        mean,
        std,
        patch_size,
        classes,
        source,
        unfrozen_blocks,
    )
    return CrackClassifier(backbone, spec)


class OnnxClassifier(CrackClassifier):
    """A trained classifier whose frozen backbone runs as its exported ONNX graph in ONNX
    Runtime or OpenVINO (crackdet.model.engines); head, temperature and spec are the checkpoint's.
    Building it needs neither timm nor torchvision, which keeps evaluate and predict quick to
    start."""

    def __init__(self, spec: ModelSpec, session: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(nn.Identity(), spec)
        self.session = session
        self.graph_engine: str = session.engine  # type: ignore[attr-defined]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.session(images)  # the graph normalises inside, as ``features`` does


def load_checkpoint(
    checkpoint: Path, spec_file: Path, engine: str = "torch", onnx_cache: Path | None = None
) -> CrackClassifier:
    """Rebuild a trained classifier from its state dict, without unpickling any code.

    With ``engine`` onnxruntime or openvino and the backbone's exported graph in ``onnx_cache``
    (train exports it), the backbone runs as that graph and is not built in PyTorch at all."""
    try:
        spec = ModelSpec.from_dict(json.loads(spec_file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CrackdetError(
            f"{spec_file}: unreadable model description ({first_line(exc)})"
        ) from None
    if checkpoint.is_file() and not zipfile.is_zipfile(checkpoint):
        raise CrackdetError(
            f"{checkpoint}: not a checkpoint (not the zip archive torch.save writes); rerun "
            "the train stage, or point --model at a folder holding model.pt and model.json"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if engine in GRAPH_ENGINES and onnx_cache is not None:
            model = _onnx_classifier(spec, state, onnx_cache, engine)
            if model is not None:
                return model
        backbone, width, _, _, _ = build_backbone(spec.backbone, pretrained=False)
        if width != spec.num_features:
            raise CrackdetError(
                f"{spec_file}: num_features {spec.num_features} != backbone {width}"
            )
        model = CrackClassifier(backbone, spec)
        model.load_state_dict(state)
    except FileNotFoundError:
        raise CrackdetError(f"{checkpoint}: not found; run the train stage first") from None
    except pickle.UnpicklingError:
        raise CrackdetError(
            f"{checkpoint}: not a valid crackdet checkpoint (it holds pickled objects other than "
            "tensors, which are never executed: loaded with weights_only=True)"
        ) from None
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        raise CrackdetError(
            f"{checkpoint}: not a valid crackdet checkpoint ({first_line(exc)})"
        ) from None
    return model.eval()


def _onnx_classifier(
    spec: ModelSpec, state: dict, onnx_cache: Path, engine: str
) -> OnnxClassifier | None:
    """The classifier around the cached graph of this checkpoint's backbone; None if the graph
    is absent or unreadable (then the caller builds the PyTorch backbone, which re-exports)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None  # not a state dict: the PyTorch path names the file and what is wrong
    path = graph_file(onnx_cache, state, spec)
    if not path.is_file():
        return None
    try:
        session = open_graph(path, engine)
    except CrackdetError:
        return None
    model = OnnxClassifier(spec, session)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("backbone.")})
    return model.eval()


def checkpoint_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The checkpoint file's bytes (``torch.save`` into memory). Through a handle, not a path:
    given a path, torch names the archive's records after the file (through an atomic write, a
    random temporary name), and equal weights would give a new md5 in dvc.lock on every run."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def operating_threshold(
    model: nn.Module, default: float, use_model_threshold: bool = True
) -> float:
    """The threshold chosen on val and stored with a checkpoint (``spec.threshold``), else
    ``default`` (a registry model without crackdet's spec, or ``predict.use_model_threshold``
    false)."""
    value = getattr(getattr(model, "spec", None), "threshold", None)
    return float(value) if use_model_threshold and value is not None else float(default)
