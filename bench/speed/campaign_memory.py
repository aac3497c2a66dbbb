"""Campaign driver memory: the peak RSS of the ``crackdet predict`` driver process for campaigns
of N small photos on a Ray cluster of this machine (``ray start`` on 127.0.0.1: two nodes of
one CPU each, as tests/test_campaigns.py starts it), local photos and a local ``--out``.

Each N runs in a fresh driver process (only the driver is measured, not Ray's workers, raylets
or object store): it joins the cluster, maps a warm-up campaign of a few photos (imports, MLflow
store, Ray Data's executor: what every campaign pays once), then resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``), notes its RSS and runs the measured campaign; the peak
(``VmHWM``) minus that RSS is what the campaign's size costs the driver. The target
(docs/campaigns.md): the peak flat within ±10 % from 100 to 2,000 photos.

Usage (from the repo root, venv active, Ray installed: make install):
    python bench/speed/campaign_memory.py [--sizes 100,500,1000,2000] [--width 300 --height 240]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))  # run as `python bench/speed/campaign_memory.py` from the root

from crackdet.core.layout import Layout  # noqa: E402
from crackdet.core.params import load_params  # noqa: E402
from crackdet.data.sources.synthetic import render_photo  # noqa: E402

WARM_UP = 8
DISTINCT = 16


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def settings():
    # Scale 1: a small photo is mapped as it is (auto would enlarge nothing and pick 1 anyway).
    return replace(load_params(PROJECT / "params.yaml").predict, scale=1.0)


def drive(work: Path, count: int, address: str) -> None:
    """One driver: warm up, then the measured campaign; prints one JSON line."""
    from crackdet.maps.ray_executor import connect
    from crackdet.workflows.campaign import run_campaign

    layout = Layout(work)
    model = str(work / "ckpt")
    connect(address)
    run_campaign([str(work / "warm")], model, str(work / "out-warm"), settings(), layout, address)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    started = time.perf_counter()
    done = run_campaign(
        [str(work / f"n{count}")], model, str(work / f"out{count}"), settings(), layout, address
    )
    seconds = time.perf_counter() - started
    record = {
        "photos": count,
        "mapped": done.mapped,
        "failed": len(done.failed),
        "rss_before_mb": before / 1024,
        "peak_mb": status_kb("VmHWM") / 1024,
        "seconds": seconds,
    }
    print("RESULT " + json.dumps(record), flush=True)


def make_photos(folder: Path, count: int, width: int, height: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        pixels, _ = render_photo(rng, width, height)
        Image.fromarray(pixels).save(folder / f"photo{i:05d}.jpg", quality=85)


def prepare(work: Path, sizes: list[int], width: int, height: int) -> None:
    import torch

    from crackdet.data.images import CLASSES
    from crackdet.model.classifier import build_classifier
    from crackdet.model.engines import ensure_graph
    from crackdet.workflows.models import load_model

    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", False, 8, 0.0, 227, CLASSES)
    (work / "ckpt").mkdir(parents=True)
    torch.save(model.state_dict(), work / "ckpt" / "model.pt")
    (work / "ckpt" / "model.json").write_text(json.dumps(model.spec.to_dict()))
    # A few distinct photos, linked under as many names as each campaign needs: the driver
    # sees N photos (N outputs, N summaries), rendering 2,000 would take longer than mapping.
    make_photos(work / "all", DISTINCT, width, height)
    distinct = sorted((work / "all").iterdir())
    for count in [WARM_UP, *sizes]:
        folder = work / ("warm" if count == WARM_UP else f"n{count}")
        folder.mkdir()
        for i in range(count):
            os.link(distinct[i % DISTINCT], folder / f"photo{i:05d}.jpg")
    layout = Layout(work)
    ensure_graph(load_model(str(work / "ckpt"), layout), layout.graph_cache)  # outside timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500,1000,2000")
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--driver", type=int, help=argparse.SUPPRESS)  # internal: one driver
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        drive(args.work, args.driver, args.address)
        return
    from tests.helpers.ray_cluster import RayCluster

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="campaign-memory-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.setdefault("CRACKDET_OFFLINE", "1")
    src = str(PROJECT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    prepare(work, sizes, args.width, args.height)
    print(f"photos {args.width}x{args.height}, predict: {settings()}")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    cluster = RayCluster(nodes=2).start()
    results = []
    try:
        for count in sizes:
            argv = [sys.executable, __file__, "--driver", str(count), "--work", str(work)]
            done = subprocess.run(
                [*argv, "--address", cluster.address],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not lines:
                raise SystemExit(f"driver for {count} photos failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(results[-1], flush=True)
    finally:
        cluster.stop()
    first = results[0]["peak_mb"]
    print(
        f"{'photos':>7} {'mapped':>7} {'RSS before':>11} {'peak':>9} {'growth':>8} "
        f"{'peak/first':>10} {'s':>7}"
    )
    for r in results:
        growth = r["peak_mb"] - r["rss_before_mb"]
        before, peak = r["rss_before_mb"], r["peak_mb"]
        print(
            f"{r['photos']:7d} {r['mapped']:7d} {before:8.1f} MB {peak:6.1f} MB "
            f"{growth:5.1f} MB {peak / first:10.3f} {r['seconds']:7.1f}"
        )
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
