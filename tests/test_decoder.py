"""The pixel decoder: shapes, its arithmetic, checkpoints, export, and what training learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crackdet.core.errors import CrackdetError
from crackdet.core.params import DecoderParams
from crackdet.model.backbones import build_backbone
from crackdet.model.decoder import (
    DECODERS,
    DecoderSpec,
    PixelDecoder,
    SubpixelDecoder,
    load_decoder,
    macs_per_pixel,
    save_decoder,
    save_no_decoder,
)
from crackdet.model.decoder_training import (
    SYNTHETIC,
    DecoderEpoch,
    PixelPhoto,
    best_threshold,
    cache_taps,
    cut_crops,
    masks_photos,
    split_photos,
    synthetic_photos,
    train_decoder,
)
from crackdet.model.dense import STRIDE, DenseModel, DenseTrunk
from tests.helpers.params import default_params_tree

LITE0 = (16, 24, 40, 112, 1280)


@pytest.fixture(scope="module")
def trunk() -> DenseTrunk:
    net, _, _, mean, std = build_backbone("efficientnet_lite0", pretrained=False)
    return DenseTrunk("efficientnet_lite0", net.eval(), mean, std).eval()


@pytest.mark.parametrize("arch", list(DECODERS))
def test_logits_come_at_full_resolution(trunk: DenseTrunk, arch: str) -> None:
    decoder = DECODERS[arch](LITE0, 16, 8)
    images = torch.rand(2, 3, 2 * STRIDE, 3 * STRIDE)
    with torch.inference_mode():
        out = DenseModel(trunk, decoder=decoder)(images)
    assert out.window is None
    assert out.pixels is not None and out.pixels.shape == (2, 1, 2 * STRIDE, 3 * STRIDE)


def test_arithmetic_is_what_the_docstring_states() -> None:
    # The module docstring derives, for lite0's taps, 1493 MACs per pixel for subpixel (C=16,
    # F=16) and 1333 for fullres (C=16, F=8): a third of the backbone's ~4 k. Counted from the
    # module, so a wider decoder shows here.
    assert macs_per_pixel(SubpixelDecoder(LITE0, 16, 16)) == pytest.approx(1493.0)
    assert macs_per_pixel(PixelDecoder(LITE0)) == pytest.approx(1333.0)
    assert macs_per_pixel(PixelDecoder(LITE0, channels=32, full=16)) > 2000


def test_the_subpixel_decoder_gives_each_pixel_its_own_logit() -> None:
    """Depth-to-space puts the 4 logits of a stride-2 cell on its 4 pixels in the order
    space-to-depth took them from the image. With weights set by hand so that each logit reads
    only the pixel at its own place (the features silent, 3x3 kernels at their centre), one dark
    pixel changes one logit: its own."""
    decoder = SubpixelDecoder(LITE0, 4, 12).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.zero_()
        for k in range(12):  # the image's 12 block channels, darkness in, one to one
            decoder.image.weight[k, k, 1, 1] = -1.0
            decoder.fuse.weight[k, k, 1, 1] = 1.0
        for colour in range(3):  # block channel colour*4 + place -> the logit of that place
            for place in range(4):
                decoder.out.weight[place, colour * 4 + place, 0, 0] = 1.0 / 3
    taps = tuple(
        torch.rand(1, n, 64 // s, 64 // s) for n, s in zip(LITE0, (2, 4, 8, 16, 32), strict=True)
    )
    images = torch.full((1, 3, 64, 64), 0.5)
    with torch.inference_mode():
        flat = decoder(taps, images)
        for row, col in [(20, 31), (21, 30), (7, 7), (62, 63)]:
            dark = images.clone()
            dark[..., row, col] = 0.0
            changed = np.argwhere((decoder(taps, dark) - flat).abs()[0, 0].numpy() > 1e-6)
            assert changed.tolist() == [[row, col]]
    assert float(flat.abs().max()) == 0.0


@pytest.mark.parametrize("arch", list(DECODERS))
def test_save_load_round_trip(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    decoder = DECODERS[arch](LITE0, 8, 4)
    spec = DecoderSpec(
        "efficientnet_lite0", LITE0, 8, 4, 0.37, ("synthetic",), {"val_f1": 0.5}, arch
    )
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


def test_a_decoder_saved_before_there_were_two_loads_as_fullres(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = DecoderSpec("efficientnet_lite0", LITE0, 8, 4)
    save_decoder(tmp_path, PixelDecoder(LITE0, 8, 4), spec)
    saved = json.loads((tmp_path / "decoder.json").read_text())
    del saved["arch"]  # as decoders were saved before the subpixel one
    (tmp_path / "decoder.json").write_text(json.dumps(saved))
    loaded = load_decoder(tmp_path)
    assert loaded is not None and isinstance(loaded[0], PixelDecoder)
    assert loaded[1].arch == "fullres"
    # A name no build knows is one line naming the file.
    (tmp_path / "decoder.json").write_text(json.dumps({**saved, "arch": "hourglass"}))
    with pytest.raises(CrackdetError, match="decoder.pt: not a valid decoder.*hourglass"):
        load_decoder(tmp_path)


def test_folder_without_decoder_gives_none(tmp_path: Path) -> None:
    assert load_decoder(tmp_path) is None
    save_decoder(
        tmp_path, PixelDecoder(LITE0, 8, 4), DecoderSpec("efficientnet_lite0", LITE0, 8, 4)
    )
    assert load_decoder(tmp_path) is not None
    # Trained with the decoder disabled: the files say so, and an older decoder is gone.
    save_no_decoder(tmp_path)
    assert load_decoder(tmp_path) is None and (tmp_path / "decoder.pt").is_file()


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


@pytest.mark.parametrize("arch", list(DECODERS))
def test_exports_to_onnx_with_dynamic_sides(trunk: DenseTrunk, tmp_path: Path, arch: str) -> None:
    import onnxruntime

    class Pixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = DenseModel(trunk, decoder=DECODERS[arch](LITE0, 16, 8).eval())

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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _decoder_params(**changes) -> DecoderParams:
    tree = default_params_tree()["train"]["decoder"]
    return DecoderParams(**{**tree, **changes})


@pytest.fixture(scope="module")
def pretrained_trunk() -> DenseTrunk:
    net, _, _, mean, std = build_backbone("efficientnet_lite0", pretrained=True)
    return DenseTrunk("efficientnet_lite0", net.eval(), mean, std).eval()


def test_training_learns_crack_pixels_an_untrained_decoder_misses(
    pretrained_trunk: DenseTrunk,
) -> None:
    cfg = _decoder_params(synthetic_photos=12, crop=128, epochs=4, val_share=0.25)
    photos = synthetic_photos(3, cfg.synthetic_photos, cfg.crop)
    train, val = split_photos(photos, cfg.val_share, 3)
    assert len(val) == 3 and not {p.name for p in train} & {p.name for p in val}
    seen: list[DecoderEpoch] = []
    result = train_decoder(pretrained_trunk, train, val, cfg, 3, on_epoch=seen.append)
    assert seen == result.history and len(seen) == 4
    assert result.best_epoch == max(seen, key=lambda r: (r.val_f1, -r.val_loss)).epoch
    # The untrained decoder, scored the same way, at its best threshold.
    torch.manual_seed(3)
    untrained = DECODERS[cfg.arch](LITE0, cfg.channels, cfg.full).eval()
    crops = cut_crops(val, cfg.crop)
    taps = cache_taps(pretrained_trunk, crops.images)
    with torch.no_grad():
        probs = torch.sigmoid(untrained(tuple(t.float() for t in taps), crops.images))
    _, before = best_threshold(probs, crops)
    # At its best threshold a random image branch is a dark-line detector of sorts, so the
    # trained decoder must beat it by a margin, not merely score.
    assert result.counts.f1 is not None and result.counts.f1 > 0.55
    assert result.counts.f1 > (before.f1 or 0.0) + 0.08
    assert result.spec.metrics["val_f1"] == pytest.approx(result.counts.f1)
    assert result.spec.trained_on == (SYNTHETIC,) and 0.0 < result.spec.threshold < 1.0


def test_crops_tile_a_photo_and_keep_planking_apart_from_cracks() -> None:
    image = np.zeros((100, 160, 3), np.uint8)
    crack = np.zeros((100, 160), bool)
    crack[:, 70] = True
    planking = np.zeros((100, 160), bool)
    planking[10, :] = True
    crops = cut_crops([PixelPhoto("a", "a", image, crack, planking)], 64)
    assert crops.images.shape == (6, 3, 64, 64)  # starts 0, 36 down; 0, 64, 96 across
    assert crops.crack.sum() > 0 and (crops.planking * crops.crack).sum() == 0
    # A cap keeps the crops holding crack pixels first (both crack tiles here), seeded.
    capped = cut_crops([PixelPhoto("a", "a", image, crack, planking)], 64, limit=3, seed=1)
    assert len(capped) == 3 and int(capped.crack.amax((1, 2, 3)).sum()) == 2
    again = cut_crops([PixelPhoto("a", "a", image, crack, planking)], 64, limit=3, seed=1)
    assert torch.equal(capped.planking, again.planking)
    small = cut_crops([PixelPhoto("b", "b", image[:40, :50], crack[:40, :50], None)], 64)
    assert small.images.shape == (1, 3, 64, 64) and small.crack[0, 0, 40:].sum() == 0


def test_masks_source_without_crack_pixels_is_one_line(tmp_path: Path) -> None:
    from PIL import Image

    for name in ("images", "masks"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    Image.new("RGB", (96, 96), (120, 120, 120)).save(tmp_path / "empty/images/a.png")
    Image.new("L", (96, 96)).save(tmp_path / "empty/masks/a.png")
    with pytest.raises(CrackdetError) as caught:
        masks_photos(tmp_path / "empty", "walls", (1.0,), 10**7)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("fetch.sources.walls: its masks hold no crack pixel")
    assert "train.decoder.enabled: false" in message


def test_no_crack_pixel_to_learn_from_is_one_line(pretrained_trunk: DenseTrunk) -> None:
    cfg = _decoder_params(crop=64)
    blank = PixelPhoto("a", "a", np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), bool), None)
    with pytest.raises(CrackdetError, match=r"^train.decoder: .*synthetic_photos"):
        train_decoder(pretrained_trunk, [blank], [blank], cfg, 0)


def _masks_folder(root: Path) -> None:
    """Two 400-px photos: a dark 2-px crack in the first, planking in the second."""
    from PIL import Image

    for name in ("images", "masks", "masks_planking"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, stem in enumerate(("train_a", "train_b")):
        photo = rng.integers(110, 150, (400, 400, 3), dtype=np.uint8)
        mask = np.zeros((400, 400), np.uint8)
        mask[:, 199:201] = 255 * (1 - k)
        photo[mask > 0] = 30
        planks = np.zeros((400, 400), np.uint8)
        planks[::20] = 255 * k
        Image.fromarray(photo).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
        Image.fromarray(planks).save(root / "masks_planking" / f"{stem}.png")


def test_train_stage_writes_the_decoder_and_logs_its_epochs(chdir_tmp: Path, tiny_params) -> None:
    import mlflow

    from crackdet.core.layout import Layout
    from crackdet.data.fetch import fetch
    from crackdet.tracking.store import tracking_uri
    from crackdet.workflows.split import split
    from crackdet.workflows.train import train

    _masks_folder(chdir_tmp / "walls")
    masks = {
        "kind": "masks",
        "path": "walls",
        "photos": "train_*",
        "scales": [1.0],
        "centre": 0.5,
        "crack_length": 0.25,
        "margin": 0.125,
        "planking_length": 0.5,
        "max_clean": 0,
        "licence": "test data",
    }
    synthetic = {"kind": "synthetic", "per_class": 24, "style": "classic", "licence": "generated"}
    params = tiny_params(
        **{
            "fetch.sources": {"synthetic": synthetic, "walls": masks},
            "train.epochs": 1,
            "train.decoder.epochs": 2,
        }
    )
    layout = Layout(chdir_tmp)
    fetch(params.fetch, params.base.seed, layout)
    kept = layout.fetch.masks / "walls"
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*.png")) == [
        f"{folder}/train_{k}.png" for folder in ("images", "masks", "masks_planking") for k in "ab"
    ]
    split(layout, params.base, params.split)
    train(layout, params.base, params.train)

    loaded = load_decoder(layout.train.dir)
    assert loaded is not None
    _, spec = loaded
    assert layout.train.decoder.is_file() and layout.train.decoder_spec.is_file()
    assert spec.trained_on == (SYNTHETIC, "walls") and spec.backbone == "efficientnet_lite0"
    client = mlflow.MlflowClient(tracking_uri(chdir_tmp))
    (run,) = client.search_runs(client.search_experiments()[0].experiment_id)
    history = client.get_metric_history(run.info.run_id, "decoder/val_f1")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["decoder/threshold"] == spec.threshold
    assert run.data.metrics["decoder/best_val_f1"] == pytest.approx(spec.metrics["val_f1"])
    assert "decoder/val_planking" in run.data.metrics
    metrics = json.loads(layout.train.metrics.read_text())
    assert metrics["decoder_val_f1"] == spec.metrics["val_f1"] and "val_acc" in metrics
