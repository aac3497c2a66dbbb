"""The window head: the classifier's head read at every stride-32 cell of one backbone pass,
saved beside the classifier, trained on features computed in context."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crackdet.core.errors import CrackdetError
from crackdet.core.layout import Layout
from crackdet.core.params import parse_params
from crackdet.data.fetch import fetch
from crackdet.model.classifier import CrackClassifier, build_classifier
from crackdet.model.dense import STRIDE, DenseModel, DenseTrunk
from crackdet.model.window_head import (
    SPEC_FILE,
    WEIGHTS_FILE,
    WindowHead,
    WindowHeadSpec,
    load_window_head,
    save_window_head,
)
from crackdet.model.window_head_training import (
    Cells,
    HeadEpoch,
    _evaluate,
    classifier_window_head,
    fit_window_head,
    mosaic_cells,
    patch_slots,
    photo_labels,
    trunk_of,
    window_means,
)
from crackdet.workflows.split import split as split_stage
from tests.helpers import tiny_params_tree


@pytest.fixture(scope="module")
def classifier() -> CrackClassifier:
    torch.manual_seed(0)
    model = build_classifier(
        "efficientnet_lite0", False, 16, 0.4, 227, ("Negative", "Positive")
    ).eval()
    model.temperature.fill_(0.7)
    return model


def _trunk(model: CrackClassifier) -> DenseTrunk:
    spec = model.spec
    return DenseTrunk(spec.backbone, model.backbone, spec.mean, spec.std).eval()


def _spec(head: WindowHead, temperature: float = 0.7) -> WindowHeadSpec:
    return WindowHeadSpec(
        features=head.hidden.in_channels,
        hidden=head.hidden.out_channels,
        window_cells=head.window_cells,
        temperature=temperature,
        threshold=0.5,
        trained_on="",
    )


def test_logits_at_every_cell() -> None:
    head = WindowHead(40, 8).eval()
    taps = (torch.zeros(2, 3, 1, 1), torch.rand(2, 40, 5, 9))
    assert head(taps).shape == (2, 2, 5, 9)


def test_centre_cell_of_an_isolated_window_is_the_classifier(classifier) -> None:
    """On a 224-px input the centre cell's window covers the whole 7x7 map: its mean is the
    classifier's pooled feature, so the logits are the classifier's (temperature included)."""
    head = WindowHead.from_classifier(classifier.head, float(classifier.temperature)).eval()
    images = torch.rand(3, 3, 7 * STRIDE, 7 * STRIDE)
    with torch.no_grad():
        window = DenseModel(_trunk(classifier), head)(images).window
        expected = classifier(images)
    assert window.shape == (3, 2, 7, 7)
    torch.testing.assert_close(window[:, :, 3, 3], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(window[:, :, 0, 0], expected, atol=1e-3)  # an edge window differs


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the exporter asked for (dynamo=False)
def test_exports_to_onnx_with_dynamic_height_and_width(classifier, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    head = WindowHead.from_classifier(classifier.head, 0.7).eval()
    model = DenseModel(_trunk(classifier), head).eval()

    class Window(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images).window

    wrapper = Window().eval()
    path = tmp_path / "dense.onnx"
    torch.onnx.export(
        wrapper,
        (torch.rand(1, 3, 256, 320),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["window"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "window": {0: "n", 2: "y", 3: "x"}},
    )
    wrapper.eval()  # the exporter restores the wrapper's mode
    session = onnxruntime.InferenceSession(str(path))
    images = torch.rand(1, 3, 384, 288)
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = wrapper(images).numpy()
    assert got.shape == (1, 2, 12, 9)
    assert abs(got - expected).max() < 1e-3


def test_save_load_round_trip(classifier, tmp_path: Path) -> None:
    assert load_window_head(tmp_path) is None  # a model folder without a window head
    head = WindowHead.from_classifier(classifier.head, 0.7).eval()
    spec = _spec(head)
    save_window_head(tmp_path, head, spec)
    loaded = load_window_head(tmp_path)
    assert loaded is not None
    again, again_spec = loaded
    assert again_spec == spec
    taps = (torch.rand(1, 1280, 6, 8),)
    with torch.no_grad():
        torch.testing.assert_close(again(taps), head(taps), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (WEIGHTS_FILE, b"not a checkpoint"),
        (SPEC_FILE, b"{not json"),
        (SPEC_FILE, b'{"features": 1280}'),
    ],
)
def test_bad_file_is_one_line(classifier, tmp_path: Path, name: str, content: bytes) -> None:
    head = WindowHead.from_classifier(classifier.head, 0.7)
    save_window_head(tmp_path, head, _spec(head))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CrackdetError) as caught:
        load_window_head(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and name in message


def test_pickled_objects_are_refused(classifier, tmp_path: Path) -> None:
    head = WindowHead.from_classifier(classifier.head, 0.7)
    save_window_head(tmp_path, head, _spec(head))
    torch.save({"hidden.weight": object()}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(CrackdetError, match=WEIGHTS_FILE):
        load_window_head(tmp_path)


def test_missing_half_is_named(classifier, tmp_path: Path) -> None:
    head = WindowHead.from_classifier(classifier.head, 0.7)
    save_window_head(tmp_path, head, _spec(head))
    (tmp_path / SPEC_FILE).unlink()
    with pytest.raises(CrackdetError, match=SPEC_FILE):
        load_window_head(tmp_path)


def _cells(n: int, shift: float, seed: int) -> Cells:
    """Window means whose class shows along one direction the classifier's head ignores."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    features = torch.rand(n, 1280, generator=generator)
    features[:, 0] += shift * targets
    return Cells(features, targets, torch.ones(n))


def test_training_in_context_improves_val_and_keeps_the_best_epoch(classifier) -> None:
    head = WindowHead.from_classifier(classifier.head, 1.0)
    params = dataclasses.replace(
        parse_params(tiny_params_tree()).train.window_head, epochs=6, lr=0.01, batch_size=32
    )
    seen: list[HeadEpoch] = []
    history, best = fit_window_head(
        head, _cells(256, 3.0, 1), _cells(128, 3.0, 2), params, 0, seen.append
    )
    assert seen == history and [h.epoch for h in history] == list(range(7))
    assert history[0].val_auc < 0.8  # the classifier's head does not read that direction
    assert history[best].val_loss == min(h.val_loss for h in history)
    assert best > 0 and history[best].val_auc > 0.95
    loss, _, auc = _evaluate(head, _cells(128, 3.0, 2))
    assert loss == pytest.approx(history[best].val_loss) and auc == history[best].val_auc


def test_mosaic_cells_read_each_patch_at_its_own_centre(classifier) -> None:
    """A patch in a 1x1 mosaic is an isolated 224-px pass: its window mean is the classifier's
    pooled feature; in a 2x2 mosaic each patch is found in its own slot (order is seeded)."""
    trunk = trunk_of(classifier)
    head = WindowHead.from_classifier(classifier.head, 1.0).eval()
    levels = torch.tensor([0, 60, 120, 180, 240], dtype=torch.uint8)  # five uniform patches
    patches = levels[:, None, None, None].expand(5, 3, 227, 227).contiguous()
    slots = patch_slots(patches)
    assert slots.shape[-2:] == (224, 224)
    targets, weights = torch.tensor([0, 1, 0, 1, 1]), torch.ones(5)
    alone = mosaic_cells(trunk, head, slots, targets, weights, 1, 0)
    with torch.no_grad():
        expected = classifier.features(slots.float() / 255.0)
    torch.testing.assert_close(alone.features, expected, rtol=1e-4, atol=1e-4)
    mixed = mosaic_cells(trunk, head, slots, targets, weights, 2, 0)
    assert mixed.features.shape == (5, 1280) and torch.equal(mixed.targets, targets)
    assert not torch.allclose(mixed.features, alone.features, atol=1e-3)  # neighbours show
    # The same mosaics built by hand: slots row by row in the seeded order, the last one filled
    # from the start of the order; each patch read at its slot's centre cell (3, 3).
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    filled = order + order[:3]
    for m in range(2):
        ids = filled[4 * m : 4 * m + 4]
        rows = [torch.cat([slots[ids[2 * r]], slots[ids[2 * r + 1]]], dim=2) for r in range(2)]
        image = torch.cat(rows, dim=1)[None].float() / 255.0
        means = window_means(trunk, head, image)[0]
        for k, patch in enumerate(ids):
            if m == 0 or k < 1:  # the second mosaic holds one patch not read before
                got = mixed.features[patch]
                torch.testing.assert_close(got, means[:, 3 + 7 * (k // 2), 3 + 7 * (k % 2)])


def test_photo_cells_are_labelled_as_masks_sources_label_windows() -> None:
    mask = np.zeros((320, 320), dtype=np.uint8)
    mask[:, 160] = 255  # a vertical crack through the middle of the photo
    labels = photo_labels(mask, (10, 10))
    # Cell x's window spans 32x + 16 ± 113 px; its centre half ± 56 px.
    assert (labels[:, 3:7] == 1).all()  # the crack crosses the centre half
    assert (labels[:, 1:3] == -1).all() and (labels[:, 7:9] == -1).all()  # near an edge
    assert (labels[:, [0, 9]] == 0).all()  # no crack pixel within the window or its margin
    clean = np.zeros((640, 640), dtype=np.uint8)
    assert (photo_labels(clean, (20, 20)) == 0).all()


def test_train_stage_writes_the_window_head_and_logs_its_epochs(
    chdir_tmp: Path, tiny_params
) -> None:
    import mlflow

    from crackdet.workflows.train import train

    params = tiny_params()
    layout = Layout(chdir_tmp)
    fetch(params.fetch, params.base.seed, layout)
    split_stage(layout, params.base, params.split)
    train(layout, params.base, params.train)
    loaded = load_window_head(layout.train.dir)
    assert loaded is not None
    head, spec = loaded
    assert spec.temperature > 0 and "mosaics" in spec.trained_on
    assert float(head.temperature) == pytest.approx(spec.temperature)
    run_id = json.loads(layout.train.run.read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{chdir_tmp / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run_id, "window_head/val_loss")
    assert [m.step for m in history] == [0, 1, 2]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["window_head/best_epoch"] in (0, 1, 2)
    best = int(metrics["window_head/best_epoch"])
    assert metrics["window_head/best_val_loss"] == pytest.approx(history[best].value)
    assert metrics["window_head/temperature"] == pytest.approx(spec.temperature)


def test_disabled_head_is_the_classifier_calibrated_as_it_is(classifier) -> None:
    """``train.window_head.enabled: false`` saves the classifier's head, temperature and
    threshold: dense maps still work, and no stale head of an earlier run is left."""
    result = classifier_window_head(classifier)
    assert result.spec.trained_on == "" and result.history == []
    assert result.spec.temperature == pytest.approx(float(classifier.temperature))
    assert result.spec.threshold == classifier.spec.threshold
    images = torch.rand(2, 3, 7 * STRIDE, 7 * STRIDE)
    with torch.no_grad():
        window = result.head(_trunk(classifier)(images))[:, :, 3, 3]
        expected = classifier(images)
    torch.testing.assert_close(window, expected, rtol=1e-4, atol=1e-5)
