"""Dense maps: one backbone pass per (scaled) photo gives the window map and the crack pixels.

A :class:`crackdet.model.dense.DenseModel` runs over the photo in large square tiles with a
halo (edge-padded bottom/right to a multiple of 32 first, as every dense consumer pads). The
halo is the graph's own reach: how far from an output cell an input pixel can still change it,
measured once per graph from the gradient (:func:`context_halo`). Each tile keeps only the cells
at least a halo away from its inner edges, so the stitched map is the whole-photo pass up to
float noise (tests/test_dense_map.py) while memory stays bounded. lite0's reach is large
(~540 px with the heads), so tiles recompute much of their area: photos up to ~4100 px a side go
through whole, which measured fastest (:data:`CORE`).

The graph (normalisation, trunk, heads and, for an OOD model, the 7x7-pooled stride-32
features) runs in ONNX Runtime, exported once per weights into the graph cache, or in PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.special import expit
from torch import nn
from torch.nn import functional as F

from crackdet.core.errors import CrackdetError
from crackdet.core.io import write_json
from crackdet.data.windows import resize_photo
from crackdet.maps.crackmap import CrackMap, Tile
from crackdet.model.classifier import load_checkpoint
from crackdet.model.decoder import load_decoder
from crackdet.model.dense import STRIDE, DenseModel, DenseTrunk
from crackdet.model.engines import onnxruntime_session, write_onnx
from crackdet.model.ood import OODModel
from crackdet.model.window_head import load_window_head

# The window a cell stands for: the classifier's 227-px patch, ~7 cells wide, so the OOD model
# scores the mean of the 7x7 stride-32 features around the cell (the classifier pools ~8x8 on
# an isolated 227-px window).
POOL_CELLS = 7
# A tile's core (the cells it gives; the tile is the core plus a halo each side) and tiles per
# forward pass. The halo of lite0 with the heads is ~540 px, so small tiles recompute most of
# their pixels: measured on a 12 MP photo (ONNX Runtime, 2 busy cores), cores of 1024 and 2048
# px took 2.7x and 1.3-1.4x the time of one whole-photo pass. A 3072-px core
# maps photos up to ~4100 px a side whole (a 12 MP photo: maxrss ~4.5 GB) and bounds a tile of
# a larger photo to ~17 MP.
CORE = 3072
TILE_BATCH = 1
OUTPUTS = ("window", "pixels", "pooled")

# How the dense graph is exported; part of its digest, so a change here never reuses old graphs.
DENSE_EXPORT: dict[str, object] = {
    "dynamo": False,  # the TorchScript exporter, as crackdet.model.engines exports
    "opset_version": 17,
    "format": 1,
}


class DenseGraph(nn.Module):
    """What runs over a tile: the dense model's outputs as a tuple named by ``outputs`` (ONNX
    outputs cannot be None), plus the pooled stride-32 features when ``pooled``."""

    def __init__(self, model: DenseModel, pooled: bool) -> None:
        super().__init__()
        self.model = model.eval()
        self.pooled = pooled
        named = {
            "window": model.window_head is not None,
            "pixels": model.decoder is not None,
            "pooled": pooled,
        }
        self.outputs = tuple(name for name in OUTPUTS if named[name])
        if not self.outputs:
            raise CrackdetError("dense model: no window head, decoder or pooled features to run")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        taps = model.trunk(images)
        out = []
        if model.window_head is not None:
            out.append(model.window_head(taps))
        if model.decoder is not None:
            out.append(model.decoder(taps, images))
        if self.pooled:
            out.append(
                F.avg_pool2d(taps[-1], POOL_CELLS, 1, POOL_CELLS // 2, count_include_pad=False)
            )
        return tuple(out)


def context_halo(graph: DenseGraph, probe: int = 2048) -> int:
    """How far (px, a multiple of 32) beyond a 32-px cell an input pixel still changes any
    output of that cell: the nonzero extent of the gradient of a central cell's outputs on
    random strips (64 px across, ``probe`` px along, each way: zero padding across a strip cuts
    no path along it). Tiles carry this halo, so their cells are the whole photo's."""
    reaches = [_reach(graph, (STRIDE * 2, probe), 1), _reach(graph, (probe, STRIDE * 2), 0)]
    if None in reaches:
        return context_halo(graph, probe * 2)  # the reach may go on beyond the probe
    return int(-(-max(reaches) // STRIDE) * STRIDE)  # type: ignore[type-var]


def _reach(graph: DenseGraph, shape: tuple[int, int], axis: int) -> int | None:
    """The gradient's reach along ``axis`` (0: rows, 1: columns) from the central cell of a
    random image of ``shape``; None when it reaches the image's ends."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *shape, generator=generator, requires_grad=True)
    cy, cx = shape[0] // 2 // STRIDE, shape[1] // 2 // STRIDE
    with torch.enable_grad():
        total = torch.zeros(())
        for name, tensor in zip(graph.outputs, graph(image), strict=True):
            if name == "pixels":
                block = tensor[
                    ..., cy * STRIDE : (cy + 1) * STRIDE, cx * STRIDE : (cx + 1) * STRIDE
                ]
                total = total + block.sum()
            else:
                total = total + tensor[..., cy, cx].sum()
        (grad,) = torch.autograd.grad(total, image)
    profile = grad.abs().sum(dim=(0, 1, 3 - axis)) > 0  # along the axis
    hits = np.flatnonzero(profile.numpy())
    low = (cy if axis == 0 else cx) * STRIDE
    if hits[0] == 0 or hits[-1] == shape[axis] - 1:
        return None
    return int(max(low - hits[0], hits[-1] + 1 - (low + STRIDE), 0))


# A dense engine: float RGB [0, 1] NCHW (sides multiples of 32) -> the graph's outputs by name.
DenseFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class TorchDense:
    """The graph in PyTorch (channels-last: faster CPU convolutions)."""

    engine = "torch"

    def __init__(self, graph: DenseGraph) -> None:
        self.graph = graph.eval()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        batch = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
        out = self.graph(batch)
        return {name: t.numpy() for name, t in zip(self.graph.outputs, out, strict=True)}


class OnnxDense:
    """The exported graph in ONNX Runtime's CPU provider, with PyTorch's thread count."""

    engine = "onnxruntime"

    def __init__(self, path: Path, outputs: tuple[str, ...]) -> None:
        self.session = onnxruntime_session(path)
        self.outputs = outputs

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(list(self.outputs), {"images": images})
        return dict(zip(self.outputs, values, strict=True))


def dense_digest(parts: Mapping[str, Mapping[str, torch.Tensor]], settings: list) -> str:
    """Digest of what the dense graph computes: each part's tensors (name, bytes, in order),
    the settings (backbone, normalisation, head architectures, outputs) and the exporter."""
    digest = hashlib.sha256()
    digest.update(json.dumps([*settings, DENSE_EXPORT, torch.__version__]).encode())
    for part, state in parts.items():
        for name, tensor in state.items():
            digest.update(f"{part}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def graph_key(graph: DenseGraph) -> str:
    """The digest of a built graph: backbone, normaliser and head tensors, head architectures."""
    model = graph.model
    trunk = model.trunk
    parts = {"backbone": trunk.backbone.state_dict()}
    heads = {"window_head": model.window_head, "decoder": model.decoder}
    for name, head in heads.items():
        if head is not None:
            parts[name] = head.state_dict()
    settings = [
        trunk.name,
        trunk.mean.flatten().tolist(),
        trunk.std.flatten().tolist(),
        {name: repr(head) for name, head in heads.items()},
        list(graph.outputs),
    ]
    return "dense-" + dense_digest(parts, settings)


def export_dense(graph: DenseGraph, path: Path) -> None:
    """Export the graph with dynamic batch, height and width (atomic write)."""
    example = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name in graph.outputs:
        dynamic[name] = {0: "batch", 2: "rows", 3: "cols"}

    settings = {
        "dynamo": False,
        "opset_version": 17,
        "input_names": ["images"],
        "output_names": list(graph.outputs),
        "dynamic_axes": dynamic,
    }
    write_onnx(graph, example, path, settings, "dense model", "set predict.engine to torch")


@dataclass(frozen=True)
class DenseRunner:
    """A dense graph ready to run: its engine function, the outputs it gives, its halo, and
    how photos are cut for it (tiles of ``core`` px plus the halo each side, ``batch`` tiles
    per call)."""

    run: DenseFn
    outputs: tuple[str, ...]
    halo: int
    engine: str
    patch: int = 227  # the window a cell's probability stands for (the classifier's patch)
    core: int = CORE
    batch: int = TILE_BATCH
    pixel_threshold: float | None = None  # the decoder's operating threshold, chosen on val
    window_threshold: float | None = None  # the window head's operating threshold
    # What runs at a photo's other scales where the graph has a decoder and a window head:
    # crack pixels come from one scale (:func:`pixel_scale`), so there the graph without the
    # decoder (None: the graph itself, its pixels unused; a graph without a window head runs
    # at that one scale alone).
    others: DenseRunner | None = None


def prepare_dense(
    graph: DenseGraph,
    engine: str,
    cache: Path | None = None,
    patch: int = 227,
    core: int = CORE,
    batch: int = TILE_BATCH,
) -> DenseRunner:
    """A runner for ``graph``: in PyTorch (``engine`` torch) or as its exported graph in ONNX
    Runtime, found in (or exported into) ``cache`` with its halo beside it (``<key>.json``);
    None: a temporary export. Where the graph has a decoder and a window head, its ``others``
    runner is the same graph without the decoder."""
    runner = _prepare(graph, engine, cache, patch, core, batch)
    model = graph.model
    if model.decoder is None or model.window_head is None:
        return runner
    without = DenseGraph(DenseModel(model.trunk, model.window_head), graph.pooled)
    return replace(runner, others=_prepare(without, engine, cache, patch, core, batch))


def _prepare(
    graph: DenseGraph, engine: str, cache: Path | None, patch: int, core: int, batch: int
) -> DenseRunner:
    key = graph_key(graph)
    if engine == "torch":
        halo = _halo(graph, key)
        return DenseRunner(TorchDense(graph), graph.outputs, halo, "torch", patch, core, batch)
    with tempfile.TemporaryDirectory(prefix="crackdet-dense-") as scratch:
        folder = Path(cache or scratch)
        path, meta = folder / f"{key}.onnx", folder / f"{key}.json"
        halo = _cached_halo(meta)
        if halo is None or not path.is_file():
            halo = _halo(graph, key)
            export_dense(graph, path)
            write_json(meta, {"halo": halo, "outputs": list(graph.outputs)})
        session = OnnxDense(path, graph.outputs)  # holds the graph in memory
    return DenseRunner(session, graph.outputs, halo, "onnxruntime", patch, core, batch)


# Halos measured in this process, by graph key (measuring takes a backward pass).
_HALOS: dict[str, int] = {}


def _halo(graph: DenseGraph, key: str) -> int:
    if key not in _HALOS:
        _HALOS[key] = context_halo(graph)
    return _HALOS[key]


def _cached_halo(meta: Path) -> int | None:
    try:
        return int(json.loads(meta.read_text())["halo"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tile_spans(length: int, core: int, halo: int) -> list[tuple[int, int, int]]:
    """(start, own_from, own_to) of the tiles along one side of a padded image: tiles of
    ``core + 2 * halo`` px (the whole side if shorter), each owning the part at least ``halo``
    px from its inner edges; the owned parts cover [0, length) once, the last tile flush with
    the end. Every tile has the same side, so tiles batch."""
    tile = core + 2 * halo
    if length <= tile:
        return [(0, 0, length)]
    starts = [*range(0, length - tile, core), length - tile]
    spans: list[tuple[int, int, int]] = []
    for k, start in enumerate(starts):
        own_from = 0 if k == 0 else spans[-1][2]
        own_to = length if k == len(starts) - 1 else start + tile - halo
        spans.append((start, own_from, own_to))
    return spans


def run_tiled(runner: DenseRunner, padded: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs over a padded uint8 HxWx3 photo (sides multiples of 32), stitched
    from tiles: ``window`` (2, H/32, W/32), ``pixels`` (H, W), ``pooled`` (F, H/32, W/32)."""
    height, width = padded.shape[:2]
    rows = tile_spans(height, runner.core, runner.halo)
    cols = tile_spans(width, runner.core, runner.halo)
    boxes = [(r, c) for r in rows for c in cols]
    out: dict[str, np.ndarray] = {}
    for begin in range(0, len(boxes), runner.batch):
        chunk = boxes[begin : begin + runner.batch]
        # Every tile has the same shape (the last ones are flush with the end), so any chunk
        # stacks into one batch.
        side = runner.core + 2 * runner.halo
        side_y, side_x = min(side, height), min(side, width)
        tiles = [padded[y : y + side_y, x : x + side_x] for (y, _, _), (x, _, _) in chunk]
        batch = np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2), dtype=np.float32)
        batch /= 255.0
        results = runner.run(batch)
        for index, ((y, y0, y1), (x, x0, x1)) in enumerate(chunk):
            for name, value in results.items():
                step = 1 if name == "pixels" else STRIDE
                if name not in out:
                    channels = () if name == "pixels" else (value.shape[1],)
                    out[name] = np.empty(
                        (*channels, height // step, width // step), dtype=np.float32
                    )
                part = value[index]
                if name == "pixels":
                    part = part[0]
                target = out[name]
                target[..., y0 // step : y1 // step, x0 // step : x1 // step] = part[
                    ..., (y0 - y) // step : (y1 - y) // step, (x0 - x) // step : (x1 - x) // step
                ]
    return out


def pad_to_stride(photo: np.ndarray) -> np.ndarray:
    """Edge-pad bottom/right to a multiple of 32 (the dense convention, PLAN: np.pad edge)."""
    height, width = photo.shape[:2]
    pad_h, pad_w = -height % STRIDE, -width % STRIDE
    if not (pad_h or pad_w):
        return photo
    return np.pad(photo, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


@dataclass(frozen=True)
class DenseMap:
    """One photo mapped densely, in the photo's own pixels: ``heatmap`` (float32 HxW: P(crack)
    of the window centred on each 32-px cell, interpolated, averaged over scales), ``cells``
    (one :class:`Tile` per cell and scale: the window centred on it), ``pixels`` (float32 HxW
    P(crack pixel), None without a decoder), ``ood_map`` (float32 HxW share of unfamiliar
    cells, None without an OOD model)."""

    heatmap: np.ndarray | None
    cells: list[Tile]
    pixels: np.ndarray | None
    ood_map: np.ndarray | None
    scales: tuple[float, ...]
    seconds: float

    def crack_map(self) -> CrackMap:
        """The window map as today's consumers take it (heatmap, tiles, OOD)."""
        if self.heatmap is None:
            raise CrackdetError("dense map: the model has no window head; no window map")
        return CrackMap(self.heatmap, self.cells, self.seconds, self.ood_map)


def dense_map(
    runner: DenseRunner,
    photo: np.ndarray,
    scales: tuple[float, ...] = (1.0,),
    ood: OODModel | None = None,
) -> DenseMap:
    """Run the dense graph over an RGB uint8 photo at each scale: window maps averaged over
    the scales, crack pixels from :func:`pixel_scale` (the others run ``runner.others``)."""
    start = time.perf_counter()
    height, width = photo.shape[:2]
    heat, pixels, flags, cells = [], [], [], []
    decoded, decodes = pixel_scale(scales), "pixels" in runner.outputs
    for scale in scales:
        reads_pixels = decodes and scale == decoded and not pixels
        step = runner
        if decodes and not reads_pixels:
            if "window" not in runner.outputs:
                continue  # no window map: nothing to give at the other scales
            step = runner.others or runner
        scaled = resize_photo(photo, scale)
        out = run_tiled(step, pad_to_stride(scaled))
        shape = scaled.shape[:2]
        if reads_pixels:
            prob = _sigmoid(out["pixels"][: shape[0], : shape[1]])
            pixels.append(_resize(prob, (height, width)))
        if "window" not in out:
            continue
        window = out["window"]
        p = _softmax1(window)
        heat.append(_cells_to_photo(p, shape, (height, width)))
        scores = None
        if ood is not None and "pooled" in out:
            pooled = out["pooled"]
            features = pooled.reshape(pooled.shape[0], -1).T
            scores = ood.score(features).reshape(p.shape).astype(np.float32)
            flags.append(
                _cells_to_photo((scores > ood.threshold).astype(np.float32), shape, (height, width))
            )
        cells.extend(_cells(p, scores, ood, shape, scale, runner.patch))
    return DenseMap(
        heatmap=_mean(heat),
        cells=cells,
        pixels=_mean(pixels),
        ood_map=_mean(flags) if flags and len(flags) == len(heat) else None,
        scales=tuple(scales),
        seconds=time.perf_counter() - start,
    )


def pixel_scale(scales: tuple[float, ...]) -> float:
    """The scale crack pixels are read at: the one nearest the photo's own pixels (the first
    of equals), where the decoder trained (masks sources and rendered photos at scale 1).
    On UAV75's 50 ``train_*`` photos (512 px, ``scale: auto`` maps them at 2.99 and 3.99)
    with the default model, which never saw UAV75, crack-pixel F1 was 0.282 from the nearer
    scale, 0.254 from the other and 0.270 from their mean (docs/results.md)."""
    return min(scales, key=lambda scale: abs(math.log(scale)))


def _cells(
    p: np.ndarray,
    scores: np.ndarray | None,
    ood: OODModel | None,
    shape: tuple[int, int],
    scale: float,
    patch: int,
) -> list[Tile]:
    """The cells whose centre lies on the scaled photo, as the window centred on each, in the
    photo's own pixels (a border cell's window overhangs the photo, as padded tiles do)."""
    rows = [i for i in range(p.shape[0]) if i * STRIDE + STRIDE / 2 < shape[0]]
    cols = [j for j in range(p.shape[1]) if j * STRIDE + STRIDE / 2 < shape[1]]
    half = patch / 2
    tiles = []
    for i in rows:
        for j in cols:
            score = None if scores is None or ood is None else float(scores[i, j])
            tiles.append(
                Tile(
                    x=round((j * STRIDE + STRIDE / 2 - half) / scale),
                    y=round((i * STRIDE + STRIDE / 2 - half) / scale),
                    size=round(patch / scale),
                    p=round(float(p[i, j]), 6),
                    ood=None if score is None else bool(score > ood.threshold),  # type: ignore[union-attr]
                    ood_score=None if score is None else round(score, 4),
                    scale=scale,
                )
            )
    return tiles


def _cells_to_photo(
    grid: np.ndarray, scaled: tuple[int, int], photo: tuple[int, int]
) -> np.ndarray:
    """A per-cell grid, bilinear between cell centres, at the photo's size: the photo spans
    ``scaled / 32`` cells of the grid (the rest is padding)."""
    image = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32), "F")
    box = (0.0, 0.0, scaled[1] / STRIDE, scaled[0] / STRIDE)
    resized = image.resize((photo[1], photo[0]), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.float32)


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if array.shape == shape:
        return np.ascontiguousarray(array, dtype=np.float32)
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), "F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _mean(arrays: list[np.ndarray]) -> np.ndarray | None:
    if not arrays:
        return None
    if len(arrays) == 1:
        return arrays[0]
    total = arrays[0].astype(np.float32, copy=True)
    for array in arrays[1:]:
        total += array  # in place: np.mean would stack the 12 MP maps first
    total /= len(arrays)
    return total


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return expit(logits.astype(np.float32, copy=False))


def _softmax1(logits: np.ndarray) -> np.ndarray:
    """P(class 1) of two-class logits (2, h, w)."""
    return _sigmoid(logits[1] - logits[0])


# The files of a model folder that hold the dense heads (beside model.pt, model.json, ood.npz).
DENSE_FILES = ("window_head.pt", "window_head.json", "decoder.pt", "decoder.json")


def has_dense_heads(folder: Path) -> bool:
    """Whether a model folder holds a trained window head or pixel decoder."""
    return (folder / "window_head.pt").is_file() or (folder / "decoder.pt").is_file()


def load_dense(
    folder: Path,
    engine: str,
    cache: Path | None = None,
    pooled: bool = False,
    windows: bool = True,
) -> DenseRunner | None:
    """The dense runner of a model folder: its backbone (model.pt, model.json) with the heads
    beside it (window_head.pt, decoder.pt; each may be absent); None when it has neither.
    ``engine`` torch runs PyTorch, any other engine the exported graph in ONNX Runtime;
    ``pooled``: also give the cells' pooled features (for the OOD model); ``windows``: the
    window map from the window head (else only crack pixels; ``predict.windows: sliding``)."""
    if not has_dense_heads(folder):
        return None
    heads = load_heads(folder)
    if not windows:
        heads = replace(heads, window_head=None, window_threshold=None)
    if heads.window_head is None and heads.decoder is None:
        return None
    trunk, patch = load_trunk(folder)
    graph = DenseGraph(DenseModel(trunk, heads.window_head, heads.decoder), pooled)
    runner = prepare_dense(graph, "torch" if engine == "torch" else "onnxruntime", cache, patch)
    return replace(
        runner, pixel_threshold=heads.pixel_threshold, window_threshold=heads.window_threshold
    )


@dataclass(frozen=True)
class DenseHeads:
    """The heads saved in a model folder (None where absent) and the decoder's operating
    threshold on P(crack pixel), chosen on val."""

    window_head: nn.Module | None
    decoder: nn.Module | None
    pixel_threshold: float | None
    window_threshold: float | None = None  # the window head's, chosen on val windows in context


def load_heads(folder: Path) -> DenseHeads:
    """The window head and the pixel decoder saved in a model folder."""
    window = load_window_head(folder)
    decoder = load_decoder(folder)
    return DenseHeads(
        window[0] if window is not None else None,
        decoder[0] if decoder is not None else None,
        float(decoder[1].threshold) if decoder is not None else None,
        float(window[1].threshold) if window is not None else None,
    )


def load_trunk(folder: Path) -> tuple[DenseTrunk, int]:
    """The checkpoint's backbone as a dense trunk, and the patch size its windows stand for."""
    checkpoint = load_checkpoint(folder / "model.pt", folder / "model.json")
    spec = checkpoint.spec
    trunk = DenseTrunk(spec.backbone, checkpoint.backbone, spec.mean, spec.std).eval()
    return trunk, spec.patch_size
