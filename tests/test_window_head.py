"""The window head: the classifier's head read at every stride-32 cell of one backbone pass,
saved beside the classifier, trained on features computed in context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crackdet.core.errors import CrackdetError
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
