"""The split stage: seeded, stratified train/val/test manifests.

The test split is written here and read only by evaluate: no choice (epoch, threshold, promotion)
is ever made on it. The split fingerprint (sha256 of the sorted test manifest, plus of all three)
lets any metric be tied to the exact images it was measured on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackdet.data import CLASSES, ManifestRow, manifest_digest, read_manifest, write_manifest
from crackdet.errors import CrackdetError
from crackdet.io import atomic_dir, write_json
from crackdet.params import SplitParams

INPUT_MANIFEST = Path("outputs/fetch/manifest.csv")
OUTPUT_DIR = Path("outputs/split")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, list[ManifestRow]]
    fingerprint: str

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {label: sum(r.label == label for r in rows) for label in CLASSES}
            for name, rows in self.splits.items()
        }


def split_rows(rows: list[ManifestRow], params: SplitParams, seed: int) -> SplitResult:
    """Stratified split: each class is shuffled with the seed and cut by the fractions."""
    # Sort first so the result depends on the data and the seed only, not on listing order.
    ordered = sorted(rows, key=lambda r: r.path)
    splits: dict[str, list[ManifestRow]] = {name: [] for name in SPLITS}
    for class_index, label in enumerate(CLASSES):
        members = [r for r in ordered if r.label == label]
        rng = np.random.default_rng([seed, class_index])
        members = [members[i] for i in rng.permutation(len(members))]
        n_val = round(len(members) * params.val)
        n_test = round(len(members) * params.test)
        n_train = len(members) - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise CrackdetError(
                f"split: class {label} has {len(members)} images, too few for "
                f"split.train/val/test = {params.train}/{params.val}/{params.test}"
            )
        splits["train"] += members[:n_train]
        splits["val"] += members[n_train : n_train + n_val]
        splits["test"] += members[n_train + n_val :]
    for name in SPLITS:
        splits[name].sort(key=lambda r: r.path)
    fingerprint = hashlib.sha256(
        "".join(f"{name}:{manifest_digest(splits[name])}\n" for name in SPLITS).encode()
    ).hexdigest()
    return SplitResult(splits, fingerprint)


def run_split(params: SplitParams, seed: int, root: Path) -> SplitResult:
    rows = read_manifest(root / INPUT_MANIFEST)
    result = split_rows(rows, params, seed)
    with atomic_dir(root / OUTPUT_DIR) as out:
        for name, members in result.splits.items():
            write_manifest(out / f"{name}.csv", members)
        write_json(
            out / "summary.json",
            {
                "fingerprint": result.fingerprint,
                "test_fingerprint": manifest_digest(result.splits["test"]),
                "counts": result.counts(),
                "seed": seed,
            },
        )
    return result
