"""Training: deterministic, best epoch picked on val, learns on real pretrained features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout
from crackdet.data.fetch import fetch
from crackdet.data.manifest import read_manifest
from crackdet.model.fitting import TrainResult, train_model
from crackdet.workflows.split import split as split_stage


def train(params, images, train_rows, val_rows, cache: Path | None = None, **kw) -> TrainResult:
    """The train stage's call: ``params.train`` and the seed, features cached in ``cache`` and
    exported graphs beside it."""
    graphs = cache.parent / "onnx" if cache is not None else None
    return train_model(
        params.train,
        params.base.seed,
        images,
        train_rows,
        val_rows,
        features_cache=cache,
        graph_cache=graphs,
        **kw,
    )


def _data(root: Path, params) -> tuple[Path, list, list]:
    fetch(params.fetch, params.base.seed, Layout(root))
    split_stage(Layout(root), params.base, params.split)
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
    first = train(params, images, train_rows, val_rows, on_epoch=seen.append)
    second = train(params, images, train_rows, val_rows)
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
    a = train(params, images, train_rows, val_rows)
    b = train(tiny_params(**{"train.epochs": 1, "base.seed": 7}), images, train_rows, val_rows)
    assert not torch.equal(a.model.head[0].weight, b.model.head[0].weight)


def test_backbone_stays_frozen(chdir_tmp: Path, tiny_params) -> None:
    params = tiny_params(**{"train.epochs": 1})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    result = train(params, images, train_rows, val_rows)
    from crackdet.data.images import CLASSES
    from crackdet.model.classifier import build_classifier

    fresh = build_classifier("efficientnet_lite0", True, 128, 0.4, 227, CLASSES)
    trained = result.model.backbone.state_dict()
    for key, value in fresh.backbone.state_dict().items():
        assert torch.equal(value, trained[key]), f"backbone tensor {key} changed"


def test_feature_cache_reuse_and_invalidation(chdir_tmp: Path, tiny_params) -> None:
    params = tiny_params(**{"train.epochs": 2, "train.augment.views": 2})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    cache = chdir_tmp / "cache"
    n_train, n_val = len(train_rows), len(val_rows)
    uncached = train(params, images, train_rows, val_rows)
    cold = train(params, images, train_rows, val_rows, cache=cache)
    assert cold.timings["forward_passes"] == 2 * n_train + n_val
    warm = train(params, images, train_rows, val_rows, cache=cache)
    assert warm.timings["forward_passes"] == 0
    for result in (cold, warm):
        assert [h.val_loss for h in result.history] == [h.val_loss for h in uncached.history]
    # Head and optimiser params do not touch the features…
    head_change = tiny_params(**{"train.epochs": 3, "train.hidden": 32, "train.lr": 0.01})
    assert (
        train(head_change, images, train_rows, val_rows, cache=cache).timings["forward_passes"] == 0
    )
    # …augmentation params invalidate the augmented view only, the seed too.
    aug_change = tiny_params(**{"train.epochs": 2, "train.augment.rotation": 5.0})
    assert (
        train(aug_change, images, train_rows, val_rows, cache=cache).timings["forward_passes"]
        == n_train
    )
    one_view = tiny_params(**{"train.epochs": 2, "train.augment.views": 1})
    assert train(one_view, images, train_rows, val_rows, cache=cache).timings["forward_passes"] == 0


def test_torn_cache_file_is_recomputed(chdir_tmp: Path, tiny_params) -> None:
    params = tiny_params(**{"train.epochs": 1, "train.augment.views": 1})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    cache = chdir_tmp / "cache"
    first = train(params, images, train_rows, val_rows, cache=cache)
    victim = next(cache.rglob(f"{train_rows[0].sha256}.npy"))
    victim.write_bytes(victim.read_bytes()[:40])  # as a killed writer without atomic rename would
    again = train(params, images, train_rows, val_rows, cache=cache)
    assert again.timings["forward_passes"] == 1
    assert [h.val_loss for h in again.history] == [h.val_loss for h in first.history]


@pytest.mark.parametrize("finetune", ["cached", "online"])
def test_fine_tuning_last_block_changes_only_that_block(
    chdir_tmp: Path, tiny_params, finetune: str
) -> None:
    params = tiny_params(
        **{
            "train.epochs": 1,
            "train.unfreeze": 1,
            "train.batch_size": 16,
            "train.finetune": finetune,
        }
    )
    images, train_rows, val_rows = _data(chdir_tmp, params)
    result = train(params, images, train_rows[:16], val_rows[:8])
    from crackdet.data.images import CLASSES
    from crackdet.model.classifier import build_classifier

    fresh = build_classifier("efficientnet_lite0", True, 128, 0.4, 227, CLASSES).backbone
    trained = result.model.backbone
    assert not torch.equal(fresh.conv_head.weight, trained.conv_head.weight)
    assert torch.equal(fresh.blocks[-1][0].conv_pw.weight, trained.blocks[-1][0].conv_pw.weight)
    assert torch.equal(fresh.conv_stem.weight, trained.conv_stem.weight)
    assert result.model.spec.unfrozen_blocks == 1


def test_cached_fine_tuning_trains_on_cached_trunk_activations(
    chdir_tmp: Path, tiny_params
) -> None:
    from crackdet.model.features import features_for
    from crackdet.model.metrics import pretrained_features

    params = tiny_params(**{"train.epochs": 2, "train.unfreeze": 1})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    cache = chdir_tmp / "cache"
    n_train, n_val = len(train_rows), len(val_rows)
    cold = train(params, images, train_rows, val_rows, cache=cache)
    # the pretrained features for the probe (train + val), then the trunk: 2 train views + val
    assert cold.timings["forward_passes"] == (n_train + n_val) + (2 * n_train + n_val)
    warm = train(params, images, train_rows, val_rows, cache=cache)
    assert warm.timings["forward_passes"] == 0
    assert [h.val_loss for h in warm.history] == [h.val_loss for h in cold.history]
    for key, value in cold.model.state_dict().items():
        assert torch.equal(value, warm.model.state_dict()[key]), key
    # The tuned model's features, from the float16 trunk cache, are those of its whole forward
    # pass to within half precision (they feed calibration and the OOD model).
    whole, _ = features_for(warm.model, images, val_rows, 0, None, 0, None)
    assert warm.val_features is not None
    torch.testing.assert_close(warm.val_features, whole, rtol=1e-2, atol=2e-2)
    # The probe's inputs are the pretrained backbone's features: a frozen run finds them cached
    # and computes only its augmented view.
    frozen_params = tiny_params(**{"train.epochs": 2})
    frozen = train(frozen_params, images, train_rows, val_rows, cache=cache)
    assert frozen.timings["forward_passes"] == n_train
    assert cold.probe_inputs is not None and frozen.probe_inputs is not None
    assert torch.equal(cold.probe_inputs[0], frozen.probe_inputs[0])
    assert torch.equal(cold.probe_inputs[1], frozen.probe_inputs[1])
    # evaluate rebuilds that pretrained backbone to score the probe on test images; the same
    # features come out, and a model that started from other weights is refused in one line.
    rebuilt = pretrained_features(cold.model, np.zeros(0), images, val_rows, None, "onnxruntime")
    torch.testing.assert_close(torch.from_numpy(rebuilt), cold.probe_inputs[1])
    cold.model.spec = dataclasses.replace(cold.model.spec, weights="other:weights.pth:0123")
    with pytest.raises(CrackdetError, match="train.backbone efficientnet_lite0: the model") as info:
        pretrained_features(cold.model, np.zeros(0), images, val_rows, None, "onnxruntime")
    assert "\n" not in str(info.value)


def test_checkpoint_bytes_depend_only_on_the_weights(tmp_path: Path) -> None:
    """Written atomically through a temporary name, a checkpoint must not carry that name:
    equal weights give an equal md5 in dvc.lock."""
    from crackdet.core.io import write_with
    from crackdet.model.classifier import checkpoint_bytes

    state = {"head.0.weight": torch.arange(6.0).reshape(2, 3), "temperature": torch.tensor(1.5)}
    for name in ("a", "b"):
        write_with(tmp_path / name / "model.pt", lambda p: p.write_bytes(checkpoint_bytes(state)))
    first, second = ((tmp_path / n / "model.pt").read_bytes() for n in ("a", "b"))
    assert first == second
    loaded = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_cached_fine_tuning_of_a_backbone_without_a_known_split_fails_before_any_pass(
    chdir_tmp: Path, tiny_params
) -> None:
    params = tiny_params(
        **{"train.unfreeze": 1, "train.backbone": "mobilenet_v3_large", "train.pretrained": False}
    )
    images, train_rows, val_rows = _data(chdir_tmp, params)
    cache = chdir_tmp / "cache"
    with pytest.raises(CrackdetError, match="set train.finetune: online") as info:
        train(params, images, train_rows, val_rows, cache=cache)
    assert "\n" not in str(info.value)
    assert not list(cache.rglob("*.npy")) and not list(cache.parent.rglob("*.onnx"))


def _rows(*spec: tuple[str, str, int]) -> list:
    from crackdet.data.manifest import ManifestRow

    rows = []
    for source, label, n in spec:
        for i in range(n):
            rows.append(
                ManifestRow(f"{source}/{label}/{i}.jpg", label, f"{i:064x}", 227, 227, source)
            )
    return rows


def test_sample_weights_give_each_source_its_share_and_each_class_alike() -> None:
    from crackdet.model.fitting import sample_weights

    rows = _rows(("big", "Positive", 300), ("big", "Negative", 100), ("small", "Positive", 20))
    weights = sample_weights(rows, "source")
    assert abs(float(weights.mean()) - 1.0) < 1e-6

    def share(source: str, label: str | None = None, w=weights) -> float:
        picked = [
            float(x)
            for x, r in zip(w, rows, strict=True)
            if r.source == source and label in (None, r.label)
        ]
        return sum(picked) / float(w.sum())

    assert abs(share("big") - 0.5) < 1e-6 and abs(share("small") - 0.5) < 1e-6
    assert abs(share("big", "Positive") - share("big", "Negative")) < 1e-6
    doubled = sample_weights(rows, "source", {"small": 2.0})
    assert abs(share("small", w=doubled) - 2 / 3) < 1e-6
    plain = sample_weights(rows, "none", {"small": 3.0})
    assert float(plain[-1]) == 3 * float(plain[0])


def test_plain_sources_are_never_augmented(chdir_tmp: Path, tiny_params) -> None:
    # A masks source's windows are already the maps' views: every view shows them as they are,
    # so two views of an all-plain set train exactly as one view does.
    params = tiny_params(**{"train.epochs": 2, "train.augment.views": 2})
    images, train_rows, val_rows = _data(chdir_tmp, params)
    plain = train(params, images, train_rows, val_rows, plain_sources=frozenset({"synthetic"}))
    one_view = tiny_params(**{"train.epochs": 2, "train.augment.views": 1})
    single = train(one_view, images, train_rows, val_rows)
    augmented = train(params, images, train_rows, val_rows)
    assert torch.equal(plain.model.head[0].weight, single.model.head[0].weight)
    assert not torch.equal(plain.model.head[0].weight, augmented.model.head[0].weight)


def test_online_fine_tuning_on_plain_rows_only_trains(chdir_tmp: Path, tiny_params) -> None:
    # Batches of plain rows only (a masks source) have nothing to augment: they train as they are.
    params = tiny_params(
        **{
            "train.epochs": 1,
            "train.unfreeze": 1,
            "train.finetune": "online",
            "train.engine": "torch",
        }
    )
    images, train_rows, val_rows = _data(chdir_tmp, params)
    result = train(params, images, train_rows, val_rows, plain_sources=frozenset({"synthetic"}))
    assert len(result.history) == 1 and result.history[0].train_loss > 0
