"""Campaign speed: the same photos mapped by the local executor and on a Ray cluster of this
machine (``ray start``: two nodes of one CPU each) with one and with two workers.

Prints, per executor: the seconds of the photo loop (``Campaign.seconds``: from the first photo
handed over to the last outcome back, which includes the Ray actors' start and model load),
photos/hour, and the ratios the targets of docs/campaigns.md speak of (Ray at one worker against
local; two workers against one). Each campaign writes into a fresh output folder (nothing is
reused), logs to a throw-away MLflow store, and uses params.yaml ``predict`` (the defaults).

Note: the local executor's torch/ONNX Runtime use every core of the process; a Ray worker gets
``OMP_NUM_THREADS`` = its CPUs (1), as Ray sets it. On a shared machine the figures move with the
other processes' load: print ``uptime`` beside them.

Usage (from the repo root, venv active, Ray installed: make install):
    python bench/speed/campaign_speed.py [--photos 8] [--width 1600] [--height 1200]
                                         [--model outputs/train]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))  # run as `python bench/speed/campaign_speed.py` from the root

from crackdet.core.layout import Layout  # noqa: E402
from crackdet.core.params import load_params  # noqa: E402
from crackdet.data.images import CLASSES  # noqa: E402
from crackdet.data.sources.synthetic import render_photo  # noqa: E402
from crackdet.model.classifier import build_classifier  # noqa: E402
from crackdet.model.engines import ensure_graph  # noqa: E402
from crackdet.workflows.campaign import run_campaign  # noqa: E402
from crackdet.workflows.models import load_model  # noqa: E402
from tests.helpers.ray_cluster import RayCluster  # noqa: E402


def make_photos(folder: Path, count: int, width: int, height: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        pixels, _ = render_photo(rng, width, height)
        Image.fromarray(pixels).save(folder / f"photo{i:03d}.jpg", quality=85)


def random_checkpoint(folder: Path) -> str:
    """A lite0 with random weights: the architecture, not the weights, sets the speed."""
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(model.spec.to_dict()))
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--model", help="checkpoint folder (default: a random-weights lite0)")
    args = parser.parse_args()
    cfg = load_params(PROJECT / "params.yaml").predict
    work = Path(tempfile.mkdtemp(prefix="campaign-speed-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ.setdefault("CRACKDET_OFFLINE", "1")
    model = args.model or random_checkpoint(work / "ckpt")
    make_photos(work / "photos", args.photos, args.width, args.height)
    layout = Layout(work)
    # The graph is exported once into the cache, outside every timing (all executors share it).
    ensure_graph(load_model(model, layout), layout.graph_cache)
    print(f"{args.photos} photos {args.width}x{args.height}, predict: {cfg}")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    seconds: dict[str, float] = {}
    done = run_campaign([str(work / "photos")], model, str(work / "local"), cfg, layout)
    seconds["local"] = done.seconds
    cluster = RayCluster(nodes=2).start()
    try:
        for workers in (1, 2):
            out = str(work / f"ray{workers}")
            started = time.perf_counter()
            done = run_campaign(
                [str(work / "photos")], model, out, cfg, layout, cluster.address, workers
            )
            seconds[f"ray x{workers}"] = done.seconds
            assert not done.mapped.errors and not done.mapped.skipped
            print(f"ray x{workers}: wall incl. connect {time.perf_counter() - started:.1f} s")
    finally:
        cluster.stop()
    for name, value in seconds.items():
        rate = args.photos / value * 3600
        print(f"{name:8s} {value:7.1f} s  {value / args.photos:5.2f} s/photo  {rate:7.0f} photos/h")
    print(f"ray x1 / local: {seconds['ray x1'] / seconds['local']:.2f}")
    print(f"ray x2 speed-up over x1: {seconds['ray x1'] / seconds['ray x2']:.2f}")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
