"""split: stratified, seeded, disjoint, fingerprinted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from crackdet.core.errors import CrackdetError
from crackdet.core.params import SplitParams
from crackdet.data.manifest import ManifestRow
from crackdet.data.signatures import components, duplicate_groups
from crackdet.data.splitting import split_rows

PARAMS = SplitParams(strategy="random", groups=458, train=0.7, val=0.15, test=0.15)


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
    with pytest.raises(CrackdetError, match=r"split: (val|test) has no Negative images"):
        split_rows(_rows(50, 2), PARAMS, seed=1)


def test_duplicates_stay_on_one_side() -> None:
    rows = _rows(100, 100)
    twins = [[f"Positive/{i:05d}.jpg", f"Positive/{i + 50:05d}.jpg"] for i in range(50)]
    result = split_rows(rows, PARAMS, seed=3, duplicates=twins)
    side = {r.path: name for name, members in result.splits.items() for r in members}
    assert all(side[a] == side[b] for a, b in twins)
    assert result.counts()["test"]["Positive"] in (14, 16)  # pairs move together


def test_grouped_split_keeps_groups_whole_and_balanced() -> None:
    rng = np.random.default_rng(0)
    rows = _rows(300, 300)
    # 30 well separated "source photos", each contributing 10 positives and 10 negatives.
    centres = rng.normal(size=(30, 22)) * 10
    photo_of = [i % 30 for i in range(600)]
    signatures = (centres[photo_of] + rng.normal(size=(600, 22)) * 0.1).astype(np.float32)
    params = dataclasses.replace(PARAMS, strategy="grouped", groups=30)
    result = split_rows(rows, params, seed=1, signatures=signatures)
    side = {r.path: name for name, members in result.splits.items() for r in members}
    photo_sides: dict[int, set[str]] = {}
    for row, photo in zip(rows, photo_of, strict=True):
        photo_sides.setdefault(photo, set()).add(side[row.path])
    assert all(len(s) == 1 for s in photo_sides.values()), "a source photo spans two splits"
    assert len(set(result.group_of.values())) == 30
    counts = result.counts()
    assert 380 <= sum(counts["train"].values()) <= 460
    assert all(n > 0 for split in counts.values() for n in split.values())
    random_result = split_rows(rows, PARAMS, seed=1, signatures=signatures)
    random_side = {r.path: name for name, m in random_result.splits.items() for r in m}
    spans = sum(
        len({random_side[r.path] for r, p in zip(rows, photo_of, strict=True) if p == k}) > 1
        for k in range(30)
    )
    assert spans > 20  # what grouping prevents


def test_hardest_examples_are_the_highest_loss() -> None:
    from crackdet.model.data_report import hardest

    rows = _rows(2, 2)  # Positive 0, 1 then Negative 0, 1
    targets = np.array([1, 1, 0, 0])
    probabilities = np.array([0.9, 0.2, 0.95, 0.1])
    worst = hardest(rows, targets, probabilities, 2)
    assert [w[0].path for w in worst] == ["Negative/00000.jpg", "Positive/00001.jpg"]
    assert worst[0][2] == pytest.approx(-np.log(0.05))


def test_a_duplicate_in_two_sources_stays_on_one_side() -> None:
    """Sources are shared out on their own, except where a duplicate ties two of them: then
    they are shared out together and the duplicate's copies land in one split."""
    from crackdet.core.params import SplitParams
    from crackdet.data.manifest import ManifestRow
    from crackdet.data.splitting import split_rows

    rows = [
        ManifestRow(f"{src}/{label}/{i:03d}.jpg", label, f"{src}{label}{i}", 8, 8, src, f"p{i}")
        for src in ("a", "b")
        for label in ("Negative", "Positive")
        for i in range(20)
    ]
    twins = [
        ["a/Positive/007.jpg", "b/Positive/013.jpg"],
        ["a/Negative/002.jpg", "b/Negative/019.jpg"],
    ]
    params = SplitParams(strategy="random", groups=4, train=0.7, val=0.15, test=0.15)
    for seed in range(8):
        result = split_rows(rows, params, seed, twins)
        where = {r.path: name for name, part in result.splits.items() for r in part}
        for first, second in twins:
            assert where[first] == where[second], (seed, first, second)


class _ReferenceUnionFind:
    """The hand-written union-find that ``components`` (scipy's csgraph) replaced, kept here as
    the oracle: a root is always the smallest member, so labels are comparable one to one."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> list[int]:
        return [self.find(i) for i in range(len(self.parent))]


def test_components_label_as_the_union_find_did() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 80))
        m = int(rng.integers(0, 2 * n + 1)) if n else 0
        pairs = [(int(a), int(b)) for a, b in rng.integers(0, max(n, 1), size=(m, 2))]
        reference = _ReferenceUnionFind(n)
        for a, b in pairs:
            reference.union(a, b)
        assert components(n, pairs) == reference.labels(), trial


def test_duplicate_groups_are_those_of_the_union_find() -> None:
    rng = np.random.default_rng(1)
    n = 1300  # more than one 512-row chunk of hash distances
    hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    near = rng.choice(n, 200, replace=False)
    hashes[near[100:]] = hashes[near[:100]] ^ np.uint64(0b101)  # 2 bits apart
    shas = [f"s{int(i)}" for i in rng.integers(0, 1250, size=n)]  # some identical bytes
    for max_bits in (-1, 0, 2, 6):
        reference = _ReferenceUnionFind(n)
        first: dict[str, int] = {}
        for i, sha in enumerate(shas):
            reference.union(first.setdefault(sha, i), i)
        if max_bits >= 0:
            close = np.bitwise_count(hashes[:, None] ^ hashes[None, :]) <= max_bits
            for i, j in zip(*np.nonzero(np.triu(close, 1)), strict=True):
                reference.union(int(i), int(j))
        members: dict[int, list[int]] = {}
        for i, label in enumerate(reference.labels()):
            members.setdefault(label, []).append(i)
        expected = sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
        assert duplicate_groups(shas, hashes, max_bits) == expected, max_bits
        assert expected  # the data does have groups
