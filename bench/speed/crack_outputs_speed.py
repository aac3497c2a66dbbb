"""Trace and write speed: from a 12 MP P(crack pixel) map to a photo's crack files.

A rendered photo (crackdet.data.sources.synthetic.render_photo, its crack mask as the
probabilities a perfect pixel decoder would give) is thresholded, traced
(crackdet.maps.cracks.trace_cracks) and written (crackdet.maps.crack_outputs: 1-bit crack mask,
traced overlay, crack CSV, GeoJSON). Prints the median seconds of each step over ``--repeats``
runs, their sum (the part of the issue's read -> map -> trace -> write <= 3 s budget that is
this module's), the cracks found, the peak resident memory and the CPU. Figures move with the
machine's load: ``uptime`` is printed beside them.

Usage (from the repo root, venv active):
    python bench/speed/crack_outputs_speed.py [--width 4000] [--height 3000] [--cracks 4]
                                              [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "src"))

from crackdet.core.params import load_params  # noqa: E402
from crackdet.data.sources.synthetic import render_photo  # noqa: E402
from crackdet.maps.crack_outputs import (  # noqa: E402
    CrackFiles,
    PhotoPlace,
    trace_photo,
    write_crack_files,
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--cracks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = load_params(PROJECT / "params.yaml").predict
    photo, mask = render_photo(np.random.default_rng(0), args.width, args.height, args.cracks)
    pixels = (mask > 0).astype(np.float32) * 0.9
    # Wall seconds and CPU seconds of this process (on a loaded machine the wall time is the
    # CPU time stretched by the others' load; the CPU time is what the step costs).
    times: dict[str, list[float]] = {"trace": [], "write": []}
    cpu: dict[str, list[float]] = {"trace": [], "write": []}
    with tempfile.TemporaryDirectory() as folder:
        files = CrackFiles(Path(folder), "photo")
        for _ in range(args.repeats):
            start, used = time.perf_counter(), time.process_time()
            traced = trace_photo(pixels, None, 0.1, settings)
            times["trace"].append(time.perf_counter() - start)
            cpu["trace"].append(time.process_time() - used)
            start, used = time.perf_counter(), time.process_time()
            write_crack_files(files, photo, traced, "photo.jpg", PhotoPlace())
            times["write"].append(time.perf_counter() - start)
            cpu["write"].append(time.process_time() - used)
        sizes = {path.name: path.stat().st_size for path in files.all()}
    assert traced is not None
    median = {step: statistics.median(values) for step, values in times.items()}
    median_cpu = {step: statistics.median(values) for step, values in cpu.items()}
    print(f"photo: {args.width}x{args.height}, crack pixels {int((mask > 0).sum())}")
    print(
        f"cracks: {len(traced.cracks)}, total length {traced.total_length:.0f} mm at 0.1 mm/px, "
        f"skeleton segments {sum(c.branches for c in traced.cracks)}"
    )
    for step, value in median.items():
        runs = ", ".join(f"{v:.2f}" for v in times[step])
        print(f"{step}: {value:.3f} s wall, {median_cpu[step]:.3f} s CPU (median; wall: {runs})")
    print(f"trace + write: {sum(median.values()):.3f} s wall, {sum(median_cpu.values()):.3f} s CPU")
    print("files: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items()))
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores)")
    print("uptime:" + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
