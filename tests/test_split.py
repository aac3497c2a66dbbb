"""split: stratified, seeded, disjoint, fingerprinted."""

from __future__ import annotations

import dataclasses

import pytest

from crackdet.data import ManifestRow
from crackdet.errors import CrackdetError
from crackdet.params import SplitParams
from crackdet.split import split_rows

PARAMS = SplitParams(train=0.7, val=0.15, test=0.15)


def _rows(n_pos: int, n_neg: int) -> list[ManifestRow]:
    return [
        ManifestRow(f"Positive/{i:05d}.jpg", "Positive", f"p{i}", 227, 227) for i in range(n_pos)
    ] + [ManifestRow(f"Negative/{i:05d}.jpg", "Negative", f"n{i}", 227, 227) for i in range(n_neg)]


def test_split_is_stratified_disjoint_and_complete() -> None:
    rows = _rows(200, 100)
    result = split_rows(rows, PARAMS, seed=42)
    counts = result.counts()
    assert counts["train"] == {"Negative": 70, "Positive": 140}
    assert counts["val"] == {"Negative": 15, "Positive": 30}
    assert counts["test"] == {"Negative": 15, "Positive": 30}
    paths = [set(r.path for r in result.splits[name]) for name in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert set().union(*paths) == {r.path for r in rows}


def test_split_depends_on_seed_and_data_not_order() -> None:
    rows = _rows(50, 50)
    a = split_rows(rows, PARAMS, seed=1)
    b = split_rows(list(reversed(rows)), PARAMS, seed=1)
    c = split_rows(rows, PARAMS, seed=2)
    assert a.fingerprint == b.fingerprint
    assert a.splits == b.splits
    assert a.fingerprint != c.fingerprint
    changed = [dataclasses.replace(rows[0], sha256="other"), *rows[1:]]
    assert split_rows(changed, PARAMS, seed=1).fingerprint != a.fingerprint


def test_split_refuses_too_few_images() -> None:
    with pytest.raises(CrackdetError, match=r"class Negative has 3 images, too few"):
        split_rows(_rows(50, 3), PARAMS, seed=1)
