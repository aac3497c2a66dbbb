"""Splitting a manifest: seeded train/val/test sets that do not leak (the split stage's core).

Two strategies (``split.strategy``):

- ``grouped`` (default): patches are clustered into ``split.groups`` groups of similar colour and
  texture signature (likely the same source photo: the public set's 40,000 patches come from 458
  photos, ~87 each, and a random patch split puts crops of one wall on both sides), and whole
  groups are assigned to splits, balancing each class towards the fractions.
- ``random``: stratified per image, as the blog did (but seeded).

Under both, duplicate groups found by fetch (identical bytes or near-identical dHash) are kept on
one side. The test split is read only by evaluate: no choice is ever made on it. The fingerprint
(sha256 over the three sorted manifests) ties every metric to the exact images it was measured on.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.params import SplitParams
from crackdet.data.images import CLASSES, LABEL_INDEX
from crackdet.data.manifest import ManifestRow, manifest_digest
from crackdet.data.signatures import components

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitResult:
    splits: dict[str, list[ManifestRow]]
    fingerprint: str
    group_of: dict[str, int]  # path -> group id (singletons when nothing groups an image)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {label: sum(r.label == label for r in rows) for label in CLASSES}
            for name, rows in self.splits.items()
        }


def read_duplicate_groups(path: Path) -> list[list[str]]:
    """Path lists from fetch's duplicates.csv (absent: no duplicates known)."""
    if not path.exists():
        return []
    groups: dict[str, list[str]] = {}
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            groups.setdefault(record["group"], []).append(record["path"])
    return list(groups.values())


def cluster_signatures(signatures: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """Cluster label per image: k-means on standardised signatures (k capped at n/2)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans  # ~0.9 s: only the grouped strategy

    k = max(2, min(n_groups, len(signatures) // 2))
    scaled = (signatures - signatures.mean(0)) / (signatures.std(0) + 1e-6)
    if len(signatures) > 20_000:  # full public set: the minibatch variant keeps this to seconds
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=1)
    return model.fit_predict(scaled)


def _groups(
    rows: list[ManifestRow],
    strategy: str,
    n_groups: int,
    seed: int,
    duplicates: list[list[str]],
    signatures: np.ndarray | None,
) -> list[int]:
    """A group id per row: duplicates together; patches of one source photo together where
    the source names it (the manifest's ``group``); under ``grouped``, the other rows clustered
    by signature within their source, ``n_groups`` clusters shared out by source size. A group
    never spans two sources unless duplicates tie them."""
    index = {row.path: i for i, row in enumerate(rows)}
    pairs: list[tuple[int, int]] = []
    for members in duplicates:
        present = [index[p] for p in members if p in index]
        pairs += [(present[0], other) for other in present[1:]]
    named: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        if row.group:
            pairs.append((named.setdefault((row.source, row.group), i), i))
    if strategy == "grouped":
        assert signatures is not None
        unnamed = [i for i, row in enumerate(rows) if not row.group]
        by_source: dict[str, list[int]] = {}
        for i in unnamed:
            by_source.setdefault(rows[i].source, []).append(i)
        for members in by_source.values():
            share = max(2, round(n_groups * len(members) / max(len(unnamed), 1)))
            labels = cluster_signatures(signatures[members], share, seed)
            first: dict[int, int] = {}
            for i, label in zip(members, labels.tolist(), strict=True):
                pairs.append((first.setdefault(label, i), i))
    return components(len(rows), pairs)


def _assign(
    rows: list[ManifestRow], group_ids: list[int], params: SplitParams, seed: int
) -> dict[str, list[ManifestRow]]:
    """Assign whole groups: biggest first (ties in seeded random order), each to the split whose
    per-class shortfall against its target fraction the group reduces most."""
    members: dict[int, list[int]] = {}
    for i, group in enumerate(group_ids):
        members.setdefault(group, []).append(i)
    rng = np.random.default_rng([seed, 7])
    order = list(members)
    tiebreak = rng.permutation(len(order))
    order = [
        g
        for _, _, g in sorted(zip([-len(members[g]) for g in order], tiebreak, order, strict=True))
    ]
    fractions = np.array([params.train, params.val, params.test])
    class_totals = np.bincount([LABEL_INDEX[r.label] for r in rows], minlength=len(CLASSES))
    targets = fractions[:, None] * class_totals[None, :]
    filled = np.zeros_like(targets)
    assignment: dict[str, list[ManifestRow]] = {name: [] for name in SPLITS}
    for group in order:
        composition = np.bincount(
            [LABEL_INDEX[rows[i].label] for i in members[group]], minlength=len(CLASSES)
        )
        shortfall = (targets - filled) / np.maximum(targets, 1.0)
        gain = (np.clip(shortfall, 0, None) * composition[None, :]).sum(1)
        choice = (
            int(np.argmax(gain))
            if gain.max() > 0
            else int(np.argmin(filled.sum(1) / targets.sum(1)))
        )
        filled[choice] += composition
        assignment[SPLITS[choice]] += [rows[i] for i in members[group]]
    return assignment


def _pools(rows: list[ManifestRow], group_ids: list[int]) -> list[list[int]]:
    """Row indices per pool of sources shared out together: a source on its own, or sources
    tied by a group they share; in order of their first source's name."""
    sources = sorted({r.source for r in rows})
    number = {name: k for k, name in enumerate(sources)}
    first: dict[int, int] = {}
    pairs = [
        (first.setdefault(group, number[row.source]), number[row.source])
        for row, group in zip(rows, group_ids, strict=True)
    ]
    pool_of = components(len(sources), pairs)
    pools: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        pools.setdefault(pool_of[number[row.source]], []).append(i)
    return [pools[k] for k in sorted(pools, key=lambda k: pool_of.index(k))]


def split_rows(
    rows: list[ManifestRow],
    params: SplitParams,
    seed: int,
    duplicates: list[list[str]] | None = None,
    signatures: np.ndarray | None = None,
) -> SplitResult:
    """Split ``rows`` (signatures: one per row, same order; needed for ``grouped``)."""
    ordered = sorted(range(len(rows)), key=lambda i: rows[i].path)
    rows = [rows[i] for i in ordered]  # the result depends on the data and seed, not listing order
    if signatures is not None:
        signatures = signatures[ordered]
    if params.strategy == "grouped" and signatures is None:
        raise CrackdetError(
            "split: grouped strategy needs outputs/fetch/signatures.npz; rerun fetch"
        )
    group_ids = _groups(rows, params.strategy, params.groups, seed, duplicates or [], signatures)
    # Each source is shared out on its own, so every source is in every split where its groups
    # allow (a source whose negatives are one photo has them in one split only); sources that
    # share a group (a duplicate found in both) are shared out together, so it stays on one side.
    splits: dict[str, list[ManifestRow]] = {name: [] for name in SPLITS}
    for members in _pools(rows, group_ids):
        part = _assign([rows[i] for i in members], [group_ids[i] for i in members], params, seed)
        for name in SPLITS:
            splits[name] += part[name]
    for name in SPLITS:
        for label in CLASSES:
            if not any(r.label == label for r in splits[name]):
                raise CrackdetError(
                    f"split: {name} has no {label} images (too few images or groups for "
                    f"split.train/val/test = {params.train}/{params.val}/{params.test})"
                )
        splits[name].sort(key=lambda r: r.path)
    fingerprint = hashlib.sha256(
        "".join(f"{name}:{manifest_digest(splits[name])}\n" for name in SPLITS).encode()
    ).hexdigest()
    return SplitResult(
        splits, fingerprint, {r.path: g for r, g in zip(rows, group_ids, strict=True)}
    )
