"""Do file numbers say which Özgenel patches come from one photo? The signature says.

The public set's patches were cut from a few hundred photos whose ids are not in the file names.
For each class this prints the median Euclidean distance between the signatures
(``crackdet.data.signatures.signature``, standardised over the whole archive as the grouped split
standardises them before clustering) of patches whose file numbers differ by less than ``--gap``,
against that of random pairs of the same class. Where neighbouring numbers are
much closer than random pairs, numbering follows the photos; where not, it does not, which is
why the split clusters signatures instead of trusting numbers (docs/results.md).

    python bench/protocols/signature_order.py [--data ../shared/data/ozgenel-4k.zip] [--gap 5]
"""

from __future__ import annotations

import argparse
import io
import random
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from crackdet.data.signatures import signature


def class_signatures(archive: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """(file number, signature) per class folder, sorted by number."""
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    with zipfile.ZipFile(archive) as source:
        for name in source.namelist():
            match = re.fullmatch(r"(?:.*/)?(Positive|Negative)/(\d+)(?:_\d+)?\.jpg", name)
            if match:
                image = Image.open(io.BytesIO(source.read(name)))
                found.setdefault(match.group(1), []).append((int(match.group(2)), signature(image)))
    every = np.stack([sig for rows in found.values() for _, sig in rows])
    mean, std = every.mean(0), every.std(0) + 1e-6
    return {
        label: sorted(((n, (sig - mean) / std) for n, sig in rows), key=lambda row: row[0])
        for label, rows in found.items()
    }


def medians(rows: list[tuple[int, np.ndarray]], gap: int, seed: int) -> tuple[float, float, int]:
    """Median distance of pairs closer than ``gap`` in number, of as many random pairs, and the
    number of pairs."""
    near = [
        float(np.linalg.norm(a[1] - b[1]))
        for i, a in enumerate(rows)
        for b in rows[i + 1 : i + gap]
        if 0 < b[0] - a[0] < gap
    ]
    rng = random.Random(seed)
    far = []
    for _ in range(max(len(near), 1000)):
        a, b = rng.sample(rows, 2)
        far.append(float(np.linalg.norm(a[1] - b[1])))
    return float(np.median(near)), float(np.median(far)), len(near)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ozgenel-4k.zip"))
    parser.add_argument("--gap", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for label, rows in sorted(class_signatures(args.data).items()):
        near, far, pairs = medians(rows, args.gap, args.seed)
        print(
            f"{label}: {len(rows)} patches; median signature distance, number gap < {args.gap}: "
            f"{near:.3f} ({pairs} pairs); random pairs: {far:.3f}"
        )


if __name__ == "__main__":
    main()
