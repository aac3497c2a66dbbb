"""Crack-map speed benchmark: crackdet's batched, overlapping sliding window against the blog's
one-tile-at-a-time loop, on one 12-megapixel photo.

Prints, on this machine and in one run:
- seconds of ``crackdet.maps.crackmap.crack_map`` (scale 1, 50 % overlap, params.yaml
  ``predict.batch_size``) with the default engine (params.yaml ``predict.engine``), then with
  each other engine (OpenVINO, ONNX Runtime, PyTorch), tiles, tiles/s and megapixels/s;
- end to end for one JPEG as ``crackdet predict`` runs it (read, map at params.yaml's
  ``predict.scale``, by default auto, write all outputs);
- peak memory: the process's maxrss (the photo is rendered in a child process so it does not set
  the mark) and the tracemalloc peak of Python/numpy allocations during the mapping (torch's CPU
  allocator is not traced; tracing costs nothing measurable here: the loop allocates little);
- the blog's way: non-overlapping windows (remainder dropped), one tile per forward pass, timed
  on the first ``--blog-tiles`` of them, its tiles/s, and the tiles/s ratio crackdet / blog; once
  with crackdet's model and once with the blog's ResNet50 head-and-backbone (random weights: the
  architecture sets the speed). It runs first, in a fresh interpreter of its own, so that no
  other engine's thread pool (ONNX Runtime's, OpenVINO's) is alive to slow PyTorch down.

Usage (from the repo root, venv active):
    python bench/speed/predict_speed.py [--model outputs/train] [--blog-tiles 80] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crackdet.core.params import ENGINES, load_params
from crackdet.data.images import CLASSES, PATCH_SIZE
from crackdet.maps.crackmap import crack_map, scales_for
from crackdet.maps.mapping import map_photos
from crackdet.model.classifier import CrackClassifier, build_classifier, load_checkpoint
from crackdet.model.engines import engine_label, ensure_graph, feature_fn

WIDTH, HEIGHT = 4032, 3024  # a 12 MP phone photo


def render() -> np.ndarray:
    from crackdet.data.sources.synthetic import render_photo

    image, _ = render_photo(np.random.default_rng(0), WIDTH, HEIGHT, 3)
    return image


def load_model(folder: Path) -> tuple[CrackClassifier, str]:
    if (folder / "model.pt").is_file() and (folder / "model.json").is_file():
        return load_checkpoint(folder / "model.pt", folder / "model.json"), f"checkpoint {folder}"
    # Timing only needs the architecture: random weights, no weights file needed.
    model = build_classifier("efficientnet_lite0", False, 128, 0.4, PATCH_SIZE, CLASSES)
    return model.eval(), "fresh efficientnet_lite0 (random weights; no checkpoint found)"


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@torch.inference_mode()
def blog_tiles_per_second(model: CrackClassifier, photo: np.ndarray, n_tiles: int) -> tuple:
    """The blog's loop: non-overlapping windows, remainder dropped, one tile per forward pass."""
    window = model.spec.patch_size
    positions = [
        (y, x)
        for y in range(0, photo.shape[0] - window + 1, window)
        for x in range(0, photo.shape[1] - window + 1, window)
    ]
    subset = positions[:n_tiles]
    y, x = subset[0]  # one untimed tile first: allocation and kernel selection stay out
    model(
        torch.from_numpy(photo[y : y + window, x : x + window].copy()).permute(2, 0, 1)[None]
        / 255.0
    )
    start = time.perf_counter()
    for y, x in subset:
        crop = torch.from_numpy(photo[y : y + window, x : x + window].copy()).permute(2, 0, 1)
        torch.softmax(model(crop[None].float() / 255.0), dim=1)[0, 1].item()
    seconds = time.perf_counter() - start
    return len(positions), len(subset), seconds


def blog_way(model_dir: str, photo: np.ndarray, n_tiles: int, repeats: int) -> dict[str, Any]:
    """Both blog-way timings, best of ``repeats`` as for crackdet; meant for a spawned child
    process (see the module docstring)."""
    model, _ = load_model(Path(model_dir))
    runs = [blog_tiles_per_second(model, photo, n_tiles) for _ in range(repeats)]
    total, timed, seconds = min(runs, key=lambda run: run[2])
    resnet = build_classifier("resnet50", False, 128, 0.4, PATCH_SIZE, CLASSES).eval()
    resnet_runs = [
        blog_tiles_per_second(resnet, photo, max(5, n_tiles // 4)) for _ in range(repeats)
    ]
    _, resnet_timed, resnet_s = min(resnet_runs, key=lambda run: run[2])
    return {
        "total": total,
        "timed": timed,
        "seconds": seconds,
        "rate": timed / seconds,
        "resnet_rate": resnet_timed / resnet_s,
    }


def end_to_end(model: CrackClassifier, photo: np.ndarray, predict: Any) -> None:
    """What ``crackdet predict`` does for one JPEG: read, map, and write the overlay, heatmaps,
    mask and JSON (params.yaml ``predict.*``, default engine)."""
    with tempfile.TemporaryDirectory(prefix="crackdet-bench-") as tmp:
        jpeg = Path(tmp) / "photo.jpg"
        Image.fromarray(photo).save(jpeg, quality=92)
        graphs = Path(tmp) / "onnx"
        ensure_graph(model, graphs)  # as after train: the graph is exported once, not per photo
        clock = time.perf_counter()
        mapped = map_photos(model, [jpeg], Path(tmp) / "out", predict, graph_cache=graphs)
        seconds = time.perf_counter() - clock
    scales = scales_for(predict.scale, predict.auto_windows, *photo.shape[:2], PATCH_SIZE)
    print(
        f"end to end (read JPEG, map, write overlay/heatmaps/mask/JSON; engine "
        f"{predict.engine}, scale {predict.scale}: {', '.join(f'{s:g}' for s in scales)}, "
        f"overlap {predict.overlap}): {seconds:.1f} s "
        f"({mapped.seconds[0]:.1f} s of it mapping)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="outputs/train", help="checkpoint folder, if any")
    parser.add_argument("--blog-tiles", type=int, default=80, help="tiles timed the blog's way")
    parser.add_argument("--repeats", type=int, default=3, help="timings per engine and loop")
    args = parser.parse_args()
    predict = load_params("params.yaml").predict
    batch_size = predict.batch_size

    clock = time.perf_counter()
    with ProcessPoolExecutor(1) as pool:
        photo = pool.submit(render).result()
    render_s = time.perf_counter() - clock
    # The baseline first, in a fresh interpreter: PyTorch alone, as the blog ran it.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        blog = pool.submit(blog_way, args.model, photo, args.blog_tiles, args.repeats).result()
    model, source = load_model(Path(args.model))
    megapixels = WIDTH * HEIGHT / 1e6
    print(f"machine: {torch.get_num_threads()} torch threads; model: {source}")
    print(f"photo: {WIDTH}x{HEIGHT} ({megapixels:.1f} MP), rendered in {render_s:.1f} s")

    rates = {}
    for engine in dict.fromkeys([predict.engine, *ENGINES]):  # the default engine first
        extract = feature_fn(model, engine)
        label = engine_label(engine)
        # One batch first so one-off costs (export, allocator, kernel selection) stay out.
        crack_map(model, photo[:PATCH_SIZE, : PATCH_SIZE * 4], 0.0, batch_size, extract=extract)
        rss_before = maxrss_mib()
        tracemalloc.start()
        result = crack_map(model, photo, 0.5, batch_size, 1.0, extract=extract)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = maxrss_mib()
        times = [result.seconds] + [
            crack_map(model, photo, 0.5, batch_size, 1.0, extract=extract).seconds
            for _ in range(args.repeats - 1)
        ]
        tiles, seconds = len(result.tiles), min(times)
        rates[engine] = tiles / seconds
        print(
            f"crackdet crack_map, engine {label} (scale 1, overlap 0.5, batch {batch_size}): "
            f"best of {len(times)} {seconds:.1f} s (all: {', '.join(f'{t:.1f}' for t in times)}), "
            f"{tiles} tiles, {rates[engine]:.1f} tiles/s, {megapixels / seconds:.2f} MP/s"
        )
        print(
            f"  peak memory: maxrss {rss_after:.0f} MiB (before mapping: {rss_before:.0f} MiB); "
            f"tracemalloc peak (numpy/Python) during mapping: {traced_peak / 2**20:.0f} MiB"
        )
    end_to_end(model, photo, predict)
    crackdet_rate = rates[predict.engine]

    print(
        f"blog way, same model (no overlap, batch 1, torch, own process): {blog['total']} tiles "
        f"on this photo; first {blog['timed']} (best of {args.repeats}) in "
        f"{blog['seconds']:.1f} s = "
        f"{blog['rate']:.1f} tiles/s (whole photo ~{blog['total'] / blog['rate']:.1f} s)"
    )
    print(
        f"tiles/s ratio crackdet ({predict.engine}, batched) / blog way with the same model: "
        f"{crackdet_rate / blog['rate']:.2f}x"
    )
    print(
        f"blog way with the blog's ResNet50 (batch 1, torch, own process, best of {args.repeats}): "
        f"{blog['resnet_rate']:.1f} tiles/s; ratio crackdet ({predict.engine}, batched) / that: "
        f"{crackdet_rate / blog['resnet_rate']:.2f}x"
    )


if __name__ == "__main__":
    main()
