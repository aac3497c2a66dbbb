"""Training-speed benchmark: crackdet's cached frozen-feature recipe against the blog's recipe.

Prints, on this machine and in one run:
- images/s of training with the feature cache cold and warm;
- wall time of the blog's recipe (same backbone, no cache: every epoch runs the backbone over
  freshly augmented train images and over val, batches of 64) against crackdet's default to the
  same number of epochs, as a ratio; it runs first, in a fresh interpreter of its own (PyTorch
  alone, no other engine's threads);
- the projected wall time of fetch + train + evaluate's forward passes on the full 40,000-image
  set from the measured per-image costs;
- for reference, the cold train time with the backbone run by each other engine
  (crackdet.model.engines).

Usage (from the repo root, venv active):
    python bench/speed/train_speed.py [--data ../shared/data/ozgenel-4k.zip] [--images 1200]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crackdet.core.layout import Layout
from crackdet.core.params import ENGINES, LabelledSource, load_params
from crackdet.data.fetch import fetch
from crackdet.data.images import CLASSES, PATCH_SIZE
from crackdet.data.manifest import read_manifest
from crackdet.model.augment import augment_image
from crackdet.model.fitting import set_determinism, train_model
from crackdet.model.inputs import load_images, targets_of
from crackdet.workflows.split import split

FULL_SET = 40_000


def blog_recipe(params, images_dir: Path, train_rows, val_rows) -> float:
    """The blog's loop: per epoch, augment every train image afresh, run the frozen backbone and
    train the head batch by batch, then run the backbone over val. Returns seconds."""
    from crackdet.model.classifier import build_classifier

    cfg = params.train
    set_determinism(params.base.seed)
    model = build_classifier(cfg.backbone, True, cfg.hidden, cfg.dropout, PATCH_SIZE, CLASSES)
    model.backbone.eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=cfg.lr)
    train_images, val_images = (
        load_images(images_dir, train_rows),
        load_images(images_dir, val_rows),
    )
    targets = targets_of(train_rows)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _epoch in range(cfg.epochs):
        order = torch.randperm(len(train_images))
        model.head.train()
        for begin in range(0, len(order), 64):
            idx = order[begin : begin + 64]
            hwc = train_images[idx].permute(0, 2, 3, 1).numpy()  # augment works on uint8 HWC
            views = np.stack([augment_image(image, cfg.augment, rng) for image in hwc])
            batch = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                features = model.features(batch)
            loss = nn.functional.cross_entropy(model.head(features), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.head.eval()
        with torch.no_grad():
            for begin in range(0, len(val_images), 64):
                model(val_images[begin : begin + 64].float() / 255)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/ozgenel-4k.zip")
    parser.add_argument("--images", type=int, default=1200, help="subset size (stratified)")
    args = parser.parse_args()
    params = load_params("params.yaml")
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="crackdet-bench-") as tmp:
        root = Path(tmp)
        (root / "dvc.yaml").write_text("stages: {}\n")
        layout = Layout(root)
        sample = LabelledSource(
            kind="archive",
            path=str(Path(args.data).resolve()),
            sha256="",
            licence="CC BY 4.0",
            group_by="signature",
        )
        fetch_params = dataclasses.replace(params.fetch, sources={"sample": sample})
        clock = time.perf_counter()
        summary = fetch(fetch_params, params.base.seed, layout)
        fetch_s = time.perf_counter() - clock
        split(layout, params.base, params.split)
        images = layout.fetch.images
        rows = {name: read_manifest(layout.split.manifest(name)) for name in ("train", "val")}
        share = min(1.0, args.images / summary.count)
        train_rows = rows["train"][:: max(1, round(1 / share))]
        val_rows = rows["val"][:: max(1, round(1 / share))]
        n = len(train_rows) + len(val_rows)
        print(f"machine: {torch.get_num_threads()} torch threads; data {args.data}")
        print(f"fetch (decode+hash {summary.count} images): {fetch_s:.1f} s")
        print(
            f"subset: {len(train_rows)} train + {len(val_rows)} val images, epochs "
            f"{params.train.epochs}, views {params.train.augment.views}"
        )

        engine = params.train.engine
        # The baseline first, in a fresh interpreter: PyTorch alone, as the blog ran it.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            blog_s = pool.submit(blog_recipe, params, images, train_rows, val_rows).result()
        # Each engine gets its own cache folder (and so its own graph folder beside it): every
        # cold run pays its own export, as a first run would.
        seed = params.base.seed
        cache, graphs = root / engine / "features", root / engine / "onnx"
        clock = time.perf_counter()
        cold = train_model(params.train, seed, images, train_rows, val_rows, None, cache, graphs)
        cold_s = time.perf_counter() - clock
        clock = time.perf_counter()
        warm = train_model(params.train, seed, images, train_rows, val_rows, None, cache, graphs)
        warm_s = time.perf_counter() - clock
        assert warm.timings["forward_passes"] == 0
        print(
            f"crackdet cold cache, engine {engine}: {cold_s:.1f} s, "
            f"{cold.timings['forward_passes']:.0f} "
            f"forward passes, {n / cold_s:.1f} images/s"
        )
        print(f"crackdet warm cache: {warm_s:.1f} s, {n / warm_s:.1f} images/s")
        for other in ENGINES:  # the same recipe with the other engines, for reference
            if other == engine:
                continue
            other_train = dataclasses.replace(params.train, engine=other)
            clock = time.perf_counter()
            other_cache, other_graphs = root / other / "features", root / other / "onnx"
            train_model(
                other_train, seed, images, train_rows, val_rows, None, other_cache, other_graphs
            )
            other_s = time.perf_counter() - clock
            print(f"crackdet cold cache, engine {other}: {other_s:.1f} s, {n / other_s:.1f} img/s")
        print(
            f"blog recipe (no cache, forward every epoch, batch 64, own process): {blog_s:.1f} s, "
            f"{n / blog_s:.1f} images/s"
        )
        print(
            f"ratio blog / crackdet cold: {blog_s / cold_s:.1f}x; "
            f"blog / crackdet warm: {blog_s / warm_s:.1f}x"
        )

        per_forward = cold.timings["features_s"] / max(cold.timings["forward_passes"], 1)
        views = params.train.augment.views
        forwards = FULL_SET * (params.split.train * views + params.split.val)
        test_forwards = FULL_SET * params.split.test  # evaluate: one plain pass per test image
        fixed = cold_s - cold.timings["features_s"]
        fetch_full = fetch_s / summary.count * FULL_SET
        train_full = forwards * per_forward + fixed
        evaluate_full = test_forwards * per_forward
        projected = fetch_full + train_full + evaluate_full
        print(
            f"projected full {FULL_SET}-image set: fetch {fetch_full:.0f} s + train "
            f"{train_full:.0f} s + evaluate forwards {evaluate_full:.0f} s = "
            f"{projected / 60:.1f} min ({1 / per_forward:.1f} forward passes/s, engine {engine})"
        )


if __name__ == "__main__":
    main()
