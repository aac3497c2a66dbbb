"""The pixel decoder: shapes, its arithmetic, checkpoints, export, and what training learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crackdet.core.errors import CrackdetError
from crackdet.model.backbones import build_backbone
from crackdet.model.decoder import (
    DecoderSpec,
    PixelDecoder,
    load_decoder,
    macs_per_pixel,
    save_decoder,
)
from crackdet.model.dense import STRIDE, DenseModel, DenseTrunk

LITE0 = (16, 24, 40, 112, 1280)


@pytest.fixture(scope="module")
def trunk() -> DenseTrunk:
    net, _, _, mean, std = build_backbone("efficientnet_lite0", pretrained=False)
    return DenseTrunk("efficientnet_lite0", net.eval(), mean, std).eval()


def test_logits_come_at_full_resolution(trunk: DenseTrunk) -> None:
    decoder = PixelDecoder(LITE0)
    images = torch.rand(2, 3, 2 * STRIDE, 3 * STRIDE)
    with torch.inference_mode():
        out = DenseModel(trunk, decoder=decoder)(images)
    assert out.window is None
    assert out.pixels is not None and out.pixels.shape == (2, 1, 2 * STRIDE, 3 * STRIDE)


def test_arithmetic_is_what_the_docstring_states() -> None:
    # The module docstring derives 1333 MACs per pixel for lite0's taps (C=16, F=8): a third of
    # the backbone's ~4 k. Counted from the module, so a wider decoder shows here.
    assert macs_per_pixel(PixelDecoder(LITE0)) == pytest.approx(1333.0)
    assert macs_per_pixel(PixelDecoder(LITE0, channels=32, full=16)) > 2000


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    decoder = PixelDecoder(LITE0, channels=8, full=4)
    spec = DecoderSpec("efficientnet_lite0", LITE0, 8, 4, 0.37, ("synthetic",), {"val_f1": 0.5})
    save_decoder(tmp_path, decoder, spec)
    loaded = load_decoder(tmp_path)
    assert loaded is not None
    again, again_spec = loaded
    assert again_spec == spec
    taps = tuple(
        torch.rand(1, n, 64 // s, 64 // s) for n, s in zip(LITE0, (2, 4, 8, 16, 32), strict=True)
    )
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(again(taps, images), decoder.eval()(taps, images))


def test_folder_without_decoder_gives_none(tmp_path: Path) -> None:
    assert load_decoder(tmp_path) is None


@pytest.mark.parametrize("broken", ["weights", "spec", "pickle", "shape"])
def test_bad_decoder_file_is_one_line_naming_it(tmp_path: Path, broken: str) -> None:
    spec = DecoderSpec("efficientnet_lite0", LITE0, 8, 4)
    save_decoder(tmp_path, PixelDecoder(LITE0, 8, 4), spec)
    weights, spec_file = tmp_path / "decoder.pt", tmp_path / "decoder.json"
    named = weights
    if broken == "weights":
        weights.write_bytes(b"not a checkpoint")
    elif broken == "spec":
        spec_file.write_text("{not json")
        named = spec_file
    elif broken == "pickle":
        torch.save({"x": object()}, weights)
    else:
        torch.save(PixelDecoder(LITE0, 16, 8).state_dict(), weights)  # another width
    with pytest.raises(CrackdetError) as caught:
        load_decoder(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(named) in message and "train.decoder" in message


def test_exports_to_onnx_with_dynamic_sides(trunk: DenseTrunk, tmp_path: Path) -> None:
    import onnxruntime

    class Pixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = DenseModel(trunk, decoder=PixelDecoder(LITE0).eval())

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images).pixels

    module = Pixels().eval()
    path = tmp_path / "dense.onnx"
    torch.onnx.export(
        module,
        (torch.rand(1, 3, 64, 64),),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["pixels"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "pixels": {0: "n", 2: "h", 3: "w"}},
        opset_version=17,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(1, 3, 96, 160)
    (got,) = session.run(None, {"images": images.numpy()})
    with torch.inference_mode():
        want = module(images).numpy()
    assert got.shape == (1, 1, 96, 160)
    np.testing.assert_allclose(got, want, atol=1e-4)
