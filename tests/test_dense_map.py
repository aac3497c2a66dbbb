"""Dense maps: tiles with the measured halo stitch to the whole-photo pass; cells sit where
their window is centred, at every scale; ONNX Runtime runs the same graph as PyTorch."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from crackdet.core.io import sha256_file
from crackdet.core.params import PredictParams, parse_params
from crackdet.data.images import CLASSES
from crackdet.maps.dense_map import (
    DenseGraph,
    DenseRunner,
    context_halo,
    dense_map,
    graph_key,
    load_dense,
    pad_to_stride,
    pixel_scale,
    prepare_dense,
    run_tiled,
    tile_spans,
)
from crackdet.maps.mapping import checkpoint_digest, map_photo, prepare_mapper
from crackdet.maps.scoring import resolve_pixel_threshold
from crackdet.model.backbones import build_backbone
from crackdet.model.classifier import CrackClassifier, build_classifier
from crackdet.model.decoder import DECODERS, DecoderSpec, build_decoder, save_decoder
from crackdet.model.dense import STRIDE, DenseModel, DenseTrunk
from crackdet.model.ood import OODModel
from crackdet.model.window_head import WindowHead as ShippedWindowHead
from crackdet.model.window_head import WindowHeadSpec, save_window_head
from tests.helpers.params import tiny_params_tree

torch.manual_seed(0)
LITE0_TAPS = (16, 24, 40, 112, 1280)


class ToyTrunk(nn.Module):
    """Five taps at strides 2..32 from strided 3x3 convolutions (random weights): a trunk
    small enough to tile a 0.3 MP photo many times over."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "toy"
        self.backbone = nn.ModuleList(
            nn.Conv2d(3 if k == 0 else 4, 4, 3, stride=2, padding=1) for k in range(5)
        )
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, taps = (images - self.mean) / self.std, []
        for conv in self.backbone:
            x = torch.tanh(conv(x))
            taps.append(x)
        return tuple(taps)


class WindowHead(nn.Module):
    """Two logits per stride-32 cell from the last tap (3x3: reads the neighbouring cells)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, taps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.conv(taps[-1])


class Decoder(nn.Module):
    """A pixel logit from two depths and the image, upsampled bilinearly."""

    def __init__(self, shallow: int, deep: int) -> None:
        super().__init__()
        self.shallow, self.deep = nn.Conv2d(shallow, 4, 3, padding=1), nn.Conv2d(deep, 4, 1)
        self.out = nn.Conv2d(4 + 3, 1, 3, padding=1)

    def forward(self, taps: tuple[torch.Tensor, ...], images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        x = F.interpolate(self.shallow(taps[0]), size=size, mode="bilinear")
        x = x + F.interpolate(self.deep(taps[2]), size=size, mode="bilinear")
        return self.out(torch.cat([x, images], 1))


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def with_core(runner: DenseRunner, core: int, halo: int | None = None) -> DenseRunner:
    halo = runner.halo if halo is None else halo
    return DenseRunner(runner.run, runner.outputs, halo, runner.engine, runner.patch, core, 2)


@pytest.fixture(scope="module")
def toy() -> DenseGraph:
    return DenseGraph(DenseModel(ToyTrunk(), WindowHead(4), Decoder(4, 4)).eval(), True)


@pytest.fixture(scope="module")
def lite0() -> DenseGraph:
    net, _, _, mean, std = build_backbone("efficientnet_lite0", pretrained=False)
    trunk = DenseTrunk("efficientnet_lite0", net.eval(), mean, std)
    return DenseGraph(DenseModel(trunk, WindowHead(1280), Decoder(16, 40)).eval(), False)


@pytest.mark.parametrize("length", [32, 320, 672, 704, 1024, 2976])
def test_tiles_own_every_cell_once_away_from_their_inner_edges(length: int) -> None:
    core, halo = 128, 96
    tile = core + 2 * halo
    spans = tile_spans(length, core, halo)
    assert spans[0][1] == 0 and spans[-1][2] == length
    for (_, _, end), (_, begin, _) in itertools.pairwise(spans):
        assert end == begin  # contiguous, no overlap, no gap
    for start, own_from, own_to in spans:
        side = min(tile, length)
        assert start % STRIDE == 0 and own_from % STRIDE == 0 and start + side <= length
        assert start <= own_from < own_to <= start + side
        assert own_from == 0 or own_from - start >= halo
        assert own_to == length or start + side - own_to >= halo


def test_halo_is_the_graphs_reach(toy: DenseGraph) -> None:
    # Five 3x3 stride-2 convs reach 31 px before a cell (none past it), the 3x3 head one cell
    # more (63 px), the 7x7 OOD pooling of the trunk's cells three more (127); the decoder less.
    assert context_halo(toy) == 128
    no_pool = DenseGraph(toy.model, pooled=False)
    assert context_halo(no_pool) == 64


def test_tiled_equals_the_whole_photo_pass(toy: DenseGraph) -> None:
    runner = prepare_dense(toy, "torch")
    padded = pad_to_stride(photo(600, 730))
    assert padded.shape[:2] == (608, 736)
    whole = run_tiled(with_core(runner, 4096), padded)
    tiled = run_tiled(with_core(runner, 64), padded)  # 4 x 6 tiles
    assert set(whole) == {"window", "pixels", "pooled"}
    assert whole["window"].shape == (2, 19, 23) and whole["pixels"].shape == (608, 736)
    for name in whole:
        np.testing.assert_allclose(tiled[name], whole[name], rtol=0, atol=1e-5, err_msg=name)
    # The halo is what makes them equal: without it the tiles' borders show.
    short = run_tiled(with_core(runner, 2 * runner.halo, halo=32), padded)
    assert np.abs(short["window"] - whole["window"]).max() > 1e-3


def test_tiled_equals_whole_on_the_lite0_trunk(lite0: DenseGraph) -> None:
    runner = prepare_dense(lite0, "torch")
    assert runner.halo >= 256  # lite0 sees far: why tiles are large
    padded = pad_to_stride(photo(2 * runner.halo + 2 * STRIDE + 100, 64, seed=1))
    assert len(tile_spans(padded.shape[0], 2 * STRIDE, runner.halo)) == 3
    tiled = run_tiled(with_core(runner, 2 * STRIDE), padded)
    whole = run_tiled(with_core(runner, 4096), padded)
    for name in whole:
        scale = np.abs(whole[name]).max()
        np.testing.assert_allclose(tiled[name], whole[name], rtol=0, atol=1e-4 * scale)


def test_tiled_equals_whole_with_the_shipped_decoders(lite0: DenseGraph) -> None:
    trunk = lite0.model.trunk
    for arch, build in DECODERS.items():
        graph = DenseGraph(DenseModel(trunk, None, build(LITE0_TAPS, 8, 8)).eval(), False)
        runner = prepare_dense(graph, "torch")
        padded = pad_to_stride(photo(2 * runner.halo + 2 * STRIDE + 100, 64, seed=1))
        tiled = run_tiled(with_core(runner, 2 * STRIDE), padded)["pixels"]
        whole = run_tiled(with_core(runner, 4096), padded)["pixels"]
        assert tiled.shape == padded.shape[:2], arch
        scale = np.abs(whole).max()
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4 * scale, err_msg=arch)


class Brightness(nn.Module):
    """A trunk whose last tap is each cell's mean brightness: P(crack) is high on bright cells."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "brightness"
        self.backbone = nn.Identity()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grey = images.mean(1, keepdim=True)
        return tuple(F.avg_pool2d(grey, s) for s in (2, 4, 8, 16, 32))


class BrightHead(nn.Module):
    def forward(self, taps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([torch.zeros_like(taps[-1]), 40 * (taps[-1] - 0.5)], 1)


@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0])
def test_cells_lie_where_their_window_is_centred(scale: float) -> None:
    graph = DenseGraph(DenseModel(Brightness(), BrightHead()), pooled=False)
    runner = prepare_dense(graph, "torch")
    image = np.zeros((500, 700, 3), np.uint8)
    image[200:264, 320:384] = 255  # a bright square centred on (232, 352)
    result = dense_map(runner, image, (scale,))
    assert result.heatmap is not None and result.heatmap.shape == (500, 700)
    assert result.pixels is None and result.ood_map is None
    bright = [t for t in result.cells if t.p > 0.5]
    assert bright and {(t.scale, t.size) for t in result.cells} == {(scale, round(227 / scale))}
    centre_y = np.mean([t.y + t.size / 2 for t in bright])
    centre_x = np.mean([t.x + t.size / 2 for t in bright])
    cell = STRIDE / scale  # a cell's side in the photo's pixels
    assert abs(centre_y - 232) <= cell / 2 + 1 and abs(centre_x - 352) <= cell / 2 + 1
    assert abs(np.mean(np.argwhere(result.heatmap > 0.5), 0) - [232, 352]).max() <= cell / 2
    # Cells centred on the photo, one per cell of the scaled photo.
    assert len(result.cells) == round(500 * scale / STRIDE) * round(700 * scale / STRIDE)


def test_window_maps_are_averaged_over_scales_and_pixels_come_from_one(toy: DenseGraph) -> None:
    runner = prepare_dense(toy, "torch")
    # The other scales run the same graph without its decoder.
    assert runner.others is not None and runner.others.outputs == ("window", "pooled")
    image = photo(300, 420, seed=2)
    both = dense_map(runner, image, (0.5, 1.0))
    one = dense_map(runner, image, (1.0,))
    half = dense_map(runner, image, (0.5,))
    assert both.pixels is not None and both.pixels.shape == (300, 420)
    assert half.pixels is not None and not np.allclose(one.pixels, half.pixels, atol=1e-3)
    np.testing.assert_allclose(both.heatmap, (one.heatmap + half.heatmap) / 2, atol=1e-6)
    np.testing.assert_array_equal(both.pixels, one.pixels)  # the photo's own pixels
    assert len(both.cells) == len(one.cells) + len(half.cells)
    assert {t.scale for t in both.cells} == {1.0, 0.5}
    # Enlarged (a small photo under scale: auto): the scale nearer the photo's own pixels.
    np.testing.assert_array_equal(
        dense_map(runner, image, (3.0, 1.5)).pixels, dense_map(runner, image, (1.5,)).pixels
    )
    # A runner made without its ``others`` runs the whole graph there, its pixels unused.
    plain = dense_map(with_core(runner, runner.core), image, (0.5, 1.0))
    np.testing.assert_allclose(plain.heatmap, both.heatmap, atol=1e-6)
    np.testing.assert_array_equal(plain.pixels, both.pixels)


@pytest.mark.parametrize(
    ("scales", "expected"), [((0.5, 0.7), 0.7), ((3.0, 4.0), 3.0), ((0.5, 2.0), 0.5), ((1.0,), 1.0)]
)
def test_pixels_are_read_at_the_scale_nearest_the_photos_pixels(
    scales: tuple[float, ...], expected: float
) -> None:
    assert pixel_scale(scales) == expected


def test_a_decoder_only_graph_runs_one_scale_alone(toy: DenseGraph) -> None:
    model = toy.model
    runner = prepare_dense(DenseGraph(DenseModel(model.trunk, None, model.decoder), False), "torch")
    assert runner.outputs == ("pixels",) and runner.others is None
    image = photo(300, 420, seed=2)
    calls: list[tuple[int, ...]] = []

    def counted(images: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(images.shape)
        return runner.run(images)

    both = dense_map(dataclasses.replace(runner, run=counted), image, (0.5, 1.0))
    assert [shape[-2:] for shape in calls] == [(320, 448)]  # scale 1, padded to 32
    np.testing.assert_array_equal(both.pixels, dense_map(runner, image, (1.0,)).pixels)
    assert both.heatmap is None and both.cells == []


def test_onnxruntime_runs_the_torch_graph(lite0: DenseGraph, tmp_path: Path) -> None:
    torch_runner = prepare_dense(lite0, "torch")
    onnx_runner = prepare_dense(lite0, "onnxruntime", tmp_path)
    assert onnx_runner.halo == torch_runner.halo
    # The graph, and the same without its decoder for the other scales.
    graph = tmp_path / f"{graph_key(lite0)}.onnx"
    assert graph.is_file() and len(list(tmp_path.glob("dense-*.onnx"))) == 2
    images = photo(224, 288, seed=3).transpose(2, 0, 1)[None].astype(np.float32) / 255
    got, expected = onnx_runner.run(images), torch_runner.run(images)
    assert set(got) == set(expected) == {"window", "pixels"}
    for name in expected:
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-4)
    assert onnx_runner.others is not None and torch_runner.others is not None
    others = onnx_runner.others.run(images)
    assert set(others) == {"window"}
    np.testing.assert_allclose(others["window"], expected["window"], rtol=0, atol=1e-4)
    # Found in the cache the second time; other head weights are other graphs.
    stamp = graph.stat().st_mtime_ns
    prepare_dense(lite0, "onnxruntime", tmp_path)
    assert graph.stat().st_mtime_ns == stamp
    head = WindowHead(1280)
    other = DenseGraph(DenseModel(lite0.model.trunk, head, lite0.model.decoder), False)
    prepare_dense(other, "onnxruntime", tmp_path)
    assert len(list(tmp_path.glob("dense-*.onnx"))) == 4


def settings(
    engine: str = "torch", model_threshold: bool = False, windows: str = "sliding"
) -> PredictParams:
    overrides = {"predict.engine": engine, "predict.overlap": 0.5, "predict.threshold": 0.5}
    overrides["predict.use_model_threshold"] = model_threshold
    overrides["predict.windows"] = windows
    return parse_params(tiny_params_tree(**overrides)).predict


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[CrackClassifier, Path]:
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(model.spec.to_dict()))
    return model, folder


def test_map_photo_maps_window_by_window_without_heads(classifier_folder) -> None:
    model, folder = classifier_folder
    mapper = prepare_mapper(model, settings(), folder=folder)
    assert mapper.dense is None and load_dense(folder, "torch") is None
    mapped = map_photo(mapper, photo(300, 400))
    assert mapped.pixels is None
    assert {t.size for t in mapped.result.tiles} == {227}
    assert sorted({t.x for t in mapped.result.tiles}) == [0, 114, 173]  # 50 % overlap, flush


def test_map_photo_takes_the_dense_path_with_heads(classifier_folder, lite0: DenseGraph) -> None:
    model, _ = classifier_folder
    ood = OODModel(
        mean=np.zeros(1280),
        components=np.eye(1280)[:3],
        scale=np.ones(3),
        residual_scale=1.0,
        threshold=1.0,
    )
    graph = DenseGraph(lite0.model, pooled=True)
    mapper = prepare_mapper(model, settings(), ood, dense=prepare_dense(graph, "torch"))
    assert mapper.extract is None and mapper.engine == "torch"
    image = photo(300, 400)
    mapped = map_photo(mapper, image)
    assert mapped.pixels is not None and mapped.pixels.shape == (300, 400)
    assert mapped.pixels.dtype == np.float32 and 0 <= mapped.pixels.min() <= 1
    result = mapped.result
    assert result.heatmap.shape == (300, 400) and result.ood_map is not None
    # One 227-px window per 32-px cell whose centre is on the photo (9 rows x 12 columns).
    xs = sorted({t.x for t in result.tiles})
    assert len(result.tiles) == 9 * 12 and np.all(np.diff(xs) == 32) and xs[0] == round(16 - 113.5)
    assert all(t.ood is not None for t in result.tiles)
    direct = dense_map(mapper.dense, image, (1.0,), ood)
    np.testing.assert_array_equal(result.heatmap, direct.heatmap)


def test_checkpoint_digest_covers_the_heads_and_keeps_old_folders(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "model.json").write_text("{}")
    before = checkpoint_digest(tmp_path)
    # A folder without heads: the digest of the classifier files alone, as before heads existed.
    old = hashlib.sha256()
    for name in ("model.pt", "model.json", "ood.npz"):
        path = tmp_path / name
        old.update(f"{name}:{sha256_file(path) if path.is_file() else '-'}\n".encode())
    assert before == old.hexdigest()
    (tmp_path / "decoder.pt").write_bytes(b"decoder")
    with_decoder = checkpoint_digest(tmp_path)
    (tmp_path / "decoder.pt").write_bytes(b"decoder, retrained")
    assert len({before, with_decoder, checkpoint_digest(tmp_path)}) == 3


def test_a_folder_with_a_decoder_gives_crack_pixels(classifier_folder, tmp_path: Path) -> None:
    model, folder = classifier_folder
    own = tmp_path / "ckpt"
    shutil.copytree(folder, own)
    spec = DecoderSpec("efficientnet_lite0", (16, 24, 40, 112, 1280), threshold=0.3)
    save_decoder(own, build_decoder(spec), spec)
    assert checkpoint_digest(own) != checkpoint_digest(folder)
    mapper = prepare_mapper(model, settings(), folder=own)
    assert mapper.dense is not None and mapper.dense.outputs == ("pixels",)
    mapped = map_photo(mapper, photo(200, 260))
    assert mapped.pixels is not None and mapped.pixels.shape == (200, 260)
    assert mapped.pixel_threshold == 0.3
    # No window head: the window map is still the classifier's, window by window.
    assert {t.size for t in mapped.result.tiles} == {227}
    # eval-maps scores the pixels where predict traces them: the decoder's own threshold under
    # predict.pixel_threshold: model, the number params give otherwise, an override first.
    assert resolve_pixel_threshold(mapper, None) == 0.3
    fixed = dataclasses.replace(
        mapper, settings=dataclasses.replace(settings(), pixel_threshold=0.7)
    )
    assert resolve_pixel_threshold(fixed, None) == 0.7
    assert resolve_pixel_threshold(fixed, 0.2) == 0.2


def test_a_folder_with_a_window_head_maps_in_one_pass(classifier_folder, tmp_path: Path) -> None:
    model, folder = classifier_folder
    own = tmp_path / "ckpt"
    shutil.copytree(folder, own)
    head = ShippedWindowHead.from_classifier(model.head, 1.0)
    spec = WindowHeadSpec(1280, 8, 7, 1.0, threshold=0.42, trained_on="")
    save_window_head(own, head, spec)
    # predict.windows: sliding (the default) leaves the window head unread.
    assert prepare_mapper(model, settings(model_threshold=True), folder=own).dense is None
    mapper = prepare_mapper(model, settings(model_threshold=True, windows="dense"), folder=own)
    assert mapper.dense is not None and mapper.dense.outputs == ("window",)
    assert mapper.extract is None and mapper.threshold == 0.42  # the head's own threshold
    mapped = map_photo(mapper, photo(200, 260))
    assert mapped.pixels is None
    xs = sorted({t.x for t in mapped.result.tiles})
    assert np.all(np.diff(xs) == STRIDE) and mapped.result.heatmap.shape == (200, 260)
