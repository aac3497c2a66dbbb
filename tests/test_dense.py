"""The dense trunk: one pass gives the registered taps, the last one pooled is the classifier's
feature vector."""

from __future__ import annotations

import pytest
import torch

from crackdet.core.errors import CrackdetError
from crackdet.model.backbones import backbone_taps, build_backbone
from crackdet.model.dense import STRIDE, DenseModel, DenseTrunk


@pytest.fixture(scope="module")
def trunk() -> DenseTrunk:
    net, _, _, mean, std = build_backbone("efficientnet_lite0", pretrained=False)
    return DenseTrunk("efficientnet_lite0", net.eval(), mean, std).eval()


def test_taps_come_at_strides_2_to_32(trunk: DenseTrunk) -> None:
    with torch.inference_mode():
        taps = trunk(torch.rand(1, 3, 2 * STRIDE, 3 * STRIDE))
    assert [(t.shape[2], t.shape[3]) for t in taps] == [
        (2 * STRIDE // s, 3 * STRIDE // s) for s in (2, 4, 8, 16, 32)
    ]
    assert taps[-1].shape[1] == 1280


def test_last_tap_pooled_is_the_classifier_feature(trunk: DenseTrunk) -> None:
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        pooled = trunk(images)[-1].mean((2, 3))
        classifier = trunk.backbone((images - 0.5) / 0.5)
    torch.testing.assert_close(pooled, classifier)


def test_model_without_heads_returns_none(trunk: DenseTrunk) -> None:
    with torch.inference_mode():
        out = DenseModel(trunk)(torch.rand(1, 3, STRIDE, STRIDE))
    assert out.window is None and out.pixels is None


def test_backbone_without_taps_names_the_key() -> None:
    with pytest.raises(CrackdetError, match=r"train.backbone resnet18 .*efficientnet_lite0"):
        backbone_taps("resnet18")
