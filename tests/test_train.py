"""Training: deterministic, best epoch picked on val, learns on real pretrained features."""

from __future__ import annotations

from pathlib import Path

import torch

from crackdet.data import read_manifest
from crackdet.fetch import fetch
from crackdet.split import run_split
from crackdet.train import train_model


def _data(root: Path, params) -> tuple[Path, list, list]:
    fetch(params.fetch, params.base.seed, root)
    run_split(params.split, params.base.seed, root)
    split = root / "outputs/split"
    return (
        root / "outputs/fetch/images",
        read_manifest(split / "train.csv"),
        read_manifest(split / "val.csv"),
    )


def test_training_is_deterministic_and_picks_best_val_epoch(chdir_tmp: Path, tiny_params) -> None:
    params = tiny_params(**{"train.epochs": 3})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    seen = []
    first = train_model(params, images, train_rows, val_rows, on_epoch=seen.append)
    second = train_model(params, images, train_rows, val_rows)
    assert [h.__dict__ | {"seconds": 0} for h in first.history] == [
        h.__dict__ | {"seconds": 0} for h in second.history
    ]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert seen == first.history
    best = max(first.history, key=lambda h: (h.val_acc, -h.val_loss))
    assert first.best_epoch == best.epoch
    assert first.history[-1].train_loss < first.history[0].train_loss


def test_other_seed_gives_other_model(chdir_tmp: Path, tiny_params) -> None:
    params = tiny_params(**{"train.epochs": 1})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    a = train_model(params, images, train_rows, val_rows)
    b = train_model(
        tiny_params(**{"train.epochs": 1, "base.seed": 7}), images, train_rows, val_rows
    )
    assert not torch.equal(a.model.head[0].weight, b.model.head[0].weight)


def test_backbone_stays_frozen(chdir_tmp: Path, tiny_params) -> None:
    params = tiny_params(**{"train.epochs": 1})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    result = train_model(params, images, train_rows, val_rows)
    from crackdet.data import CLASSES
    from crackdet.models import build_classifier

    fresh = build_classifier("efficientnet_lite0", True, 128, 0.4, 227, CLASSES)
    trained = result.model.backbone.state_dict()
    for key, value in fresh.backbone.state_dict().items():
        assert torch.equal(value, trained[key]), f"backbone tensor {key} changed"
