"""Compact image signatures: duplicates and likely source-photo groups.

The public set holds byte-identical images under different names and near-identical
re-encodings, and its 40,000 patches were cut from only 458 photos, whose ids are not in the file
names. Fetch computes, while it decodes every image once anyway:

- a 64-bit difference hash (dHash) per image, to find exact and near duplicates;
- a small colour/texture signature (channel means and standard deviations, a 4x4 grey layout),
  so that split can cluster patches that likely come from one photo.

On the real 4,000-image sample, positives with neighbouring file numbers are much closer in this
signature than random pairs while negatives' numbers carry no such order (docs/results.md), so
grouping clusters signatures rather than trusting file numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from crackdet.core.io import read_npz, write_npz

SIGNATURE_SIZE = 22


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: brightness increases between horizontal neighbours on a 9x8 grid."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def signature(image: Image.Image) -> np.ndarray:
    """Channel means and stds of a 16x16 thumbnail plus its 4x4 grey layout (22 floats)."""
    small = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), np.float32)
    small /= 255.0
    grey = small.mean(axis=2)
    layout = grey.reshape(4, 4, 4, 4).mean(axis=(1, 3)).flatten()
    return np.concatenate([small.mean(axis=(0, 1)), small.std(axis=(0, 1)), layout]).astype(
        np.float32
    )


def save_signatures(
    path: Path, paths: list[str], hashes: list[int], sigs: list[np.ndarray]
) -> None:
    write_npz(
        path,
        {
            "paths": np.array(paths),
            "dhash": np.array(hashes, dtype=np.uint64),
            "signature": np.stack(sigs) if sigs else np.zeros((0, SIGNATURE_SIZE), np.float32),
        },
    )


def load_signatures(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = read_npz(path)
    return [str(p) for p in data["paths"]], data["dhash"], data["signature"]


def components(n: int, pairs: np.ndarray | list[tuple[int, int]]) -> list[int]:
    """The connected component of each of ``n`` items linked by ``pairs`` (index pairs), named
    by its smallest member: items tied directly or through others share a label."""
    if n == 0:
        return []
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_array((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    smallest = np.full(count, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels].tolist()


def duplicate_groups(shas: list[str], hashes: np.ndarray, max_bits: int) -> list[list[int]]:
    """Groups (size >= 2) of identical bytes or dHash within ``max_bits`` bits, as index lists."""
    n = len(shas)
    first: dict[str, int] = {}
    pairs = [np.array([(first.setdefault(sha, i), i) for i, sha in enumerate(shas)], np.int64)]
    if max_bits >= 0 and n > 1:
        hashes = np.asarray(hashes, dtype=np.uint64)
        chunk = 512  # bounds memory: chunk x n uint64 distances at a time
        for start in range(0, n, chunk):
            block = hashes[start : start + chunk]
            distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
            rows, cols = np.nonzero(distance <= max_bits)
            keep = start + rows < cols
            pairs.append(np.stack([start + rows[keep], cols[keep]], axis=1))
    members: dict[int, list[int]] = {}
    for i, label in enumerate(components(n, np.concatenate(pairs).reshape(-1, 2))):
        members.setdefault(label, []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
