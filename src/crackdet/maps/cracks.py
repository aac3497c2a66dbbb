"""Measured cracks from crack pixels: skeleton, instances, length, width, severity, polylines.

A crack-pixel mask (True = crack) is thinned to a one-pixel skeleton; each 8-connected piece of
skeleton is a stretch of crack (branches included), and stretches whose ends come within a gap
of each other are one crack instance (:func:`group_pieces`). Length is the skeleton's path length
(1 per orthogonal step, sqrt 2 per diagonal step that no orthogonal pair already covers);
width at a skeleton pixel is ``2 d - 1``, ``d`` the Euclidean distance from that pixel to the
nearest non-crack pixel (a straight crack ``w`` pixels wide measures ``w`` for odd ``w``,
``w - 1`` for even ``w``). Pixels become millimetres when the photo's scale is known.

The severity of a crack is the band its *maximum* width falls in: an inspector grades a crack by
its widest point. :data:`DEFAULT_BANDS` follow the AASHTO Manual for Bridge Element Inspection's
condition states for cracking in reinforced concrete (insignificant below 0.012 in = 0.3 mm,
moderate to 0.05 in = 1.27 mm, wide above), see docs/maps.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.params import WidthBand, width_band_problem

__all__ = [
    "DEFAULT_BANDS",
    "Crack",
    "WidthBand",
    "check_bands",
    "group_pieces",
    "severity",
    "trace_cracks",
    "traced_length",
]

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours belong to one crack


DEFAULT_BANDS = (
    WidthBand("insignificant", 0.3),
    WidthBand("moderate", 1.27),
    WidthBand("wide", None),
)


def check_bands(bands: tuple[WidthBand, ...], key: str = "predict.width_bands") -> None:
    """Bands must be named apart, strictly increasing, positive, and end open (None)."""
    problem = width_band_problem(bands, key)
    if problem:
        raise CrackdetError(problem)


def severity(max_width_mm: float | None, bands: tuple[WidthBand, ...] = DEFAULT_BANDS) -> str:
    """The band a crack's maximum width falls in ("" when the scale is unknown)."""
    if max_width_mm is None:
        return ""
    for band in bands:
        if band.below_mm is None or max_width_mm < band.below_mm:
            return band.name
    return bands[-1].name


@dataclass(frozen=True)
class Crack:
    """One traced crack: one or more stretches of skeleton (see :func:`group_pieces`) with
    their branches."""

    id: int
    length_px: float
    mean_width_px: float
    max_width_px: float
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive pixels of the skeleton)
    branches: int  # skeleton segments between end and junction points
    polylines: tuple[tuple[tuple[float, float], ...], ...]  # (x, y) points, one line a segment
    mm_per_pixel: float | None = None
    severity: str = ""

    @property
    def length_mm(self) -> float | None:
        return None if self.mm_per_pixel is None else self.length_px * self.mm_per_pixel

    @property
    def mean_width_mm(self) -> float | None:
        return None if self.mm_per_pixel is None else self.mean_width_px * self.mm_per_pixel

    @property
    def max_width_mm(self) -> float | None:
        return None if self.mm_per_pixel is None else self.max_width_px * self.mm_per_pixel

    def row(self) -> dict[str, Any]:
        """The crack table's row (CSV): millimetre columns empty when the scale is unknown."""

        def mm(value: float | None) -> float | str:
            return "" if value is None else round(value, 3)

        return {
            "crack": self.id,
            "length_px": round(self.length_px, 2),
            "mean_width_px": round(self.mean_width_px, 2),
            "max_width_px": round(self.max_width_px, 2),
            "length_mm": mm(self.length_mm),
            "mean_width_mm": mm(self.mean_width_mm),
            "max_width_mm": mm(self.max_width_mm),
            "severity": self.severity,
            "branches": self.branches,
            "x0": self.bbox[0],
            "y0": self.bbox[1],
            "x1": self.bbox[2],
            "y1": self.bbox[3],
        }


def crack_mask(probability: np.ndarray, threshold: float, hysteresis: float = 1.0) -> np.ndarray:
    """Crack pixels of a P(crack pixel) map: those at or over ``threshold`` and, with
    ``hysteresis`` < 1, those at or over ``hysteresis * threshold`` connected (8-neighbours) to
    them. A crack's faint stretch between two clear ones then joins them instead of splitting
    the crack into pieces (Canny's hysteresis, as crack-segmentation post-processing uses it).
    """
    from scipy import ndimage  # scipy: only where cracks are traced

    probability = np.asarray(probability)
    strong = probability >= threshold
    if hysteresis >= 1.0 or not strong.any():
        return strong
    weak = probability >= hysteresis * threshold
    labels, _ = ndimage.label(weak, structure=EIGHT)
    keep = np.unique(labels[strong])
    return np.isin(labels, keep[keep > 0])


def skeleton_length(skeleton: np.ndarray) -> float:
    """Path length of a one-pixel skeleton: orthogonal neighbour pairs count 1, diagonal pairs
    sqrt 2 unless an orthogonal pixel already joins them (an L corner is 2, not 2 + sqrt 2)."""
    s = np.asarray(skeleton, dtype=bool)
    length = float(np.count_nonzero(s[:, :-1] & s[:, 1:]))
    length += float(np.count_nonzero(s[:-1, :] & s[1:, :]))
    # Down-right diagonal (a, d) with corners b (right of a) and c (below a).
    a, b, c, d = s[:-1, :-1], s[:-1, 1:], s[1:, :-1], s[1:, 1:]
    length += math.sqrt(2) * np.count_nonzero(a & d & ~b & ~c)
    # Down-left diagonal (b, c) with corners a and d.
    length += math.sqrt(2) * np.count_nonzero(b & c & ~a & ~d)
    return length


# The 8 neighbours' offsets, orthogonal first: a diagonal beside an orthogonal pair is not a
# separate path.
STEPS = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _segments(piece: np.ndarray) -> list[list[tuple[int, int]]]:
    """A connected skeleton split into paths between end points and junctions, each a list of
    (row, col) pixels in order. A closed loop with no end or junction is one path.

    Pixels are numbered in row-major order and their skeleton neighbours looked up once, with
    numpy, so the walk in Python only follows integers (tests/test_cracks.py checks it walks the
    paths a walk over sets of pixel tuples walks)."""
    coords = np.argwhere(piece)
    if not len(coords):
        return []
    # Row-major numbers, looked up by binary search (a piece spanning a photo has a bounding
    # box of millions of pixels and a few thousand skeleton pixels).
    side = piece.shape[1] + 2
    flat = (coords[:, 0] + 1) * side + coords[:, 1] + 1  # sorted: argwhere is row-major
    around = np.empty((len(coords), len(STEPS)), dtype=np.int64)
    for k, (dr, dc) in enumerate(STEPS):
        target = flat + dr * side + dc
        at = np.minimum(np.searchsorted(flat, target), len(flat) - 1)
        around[:, k] = np.where(flat[at] == target, at, -1)
    steps = [[q for q in row if q >= 0] for row in around.tolist()]
    is_node = [len(row) != 2 for row in steps]
    used: set[tuple[int, int]] = set()  # steps walked, so each segment is walked once
    paths: list[list[int]] = []

    def edge(a: int, b: int) -> tuple[int, int]:
        return (a, b) if a < b else (b, a)

    def walk(start: int, first: int) -> list[int]:
        path, prev, here = [start], start, first
        used.add(edge(start, first))
        while True:
            path.append(here)
            if is_node[here] or here == start:  # an end, a junction, or round a loop
                return path
            nxt = [q for q in steps[here] if q != prev and edge(here, q) not in used]
            if not nxt:
                return path
            used.add(edge(here, nxt[0]))
            prev, here = here, nxt[0]

    for node in (i for i, flag in enumerate(is_node) if flag):  # row-major: in sorted order
        for q in steps[node]:
            if edge(node, q) not in used:
                paths.append(walk(node, q))
    if not paths:  # a loop: start at its first pixel; a lone pixel is a path of one
        paths.append(walk(0, steps[0][0]) if steps[0] else [0])
    rc = [(int(r), int(c)) for r, c in coords.tolist()]
    return [[rc[i] for i in path] for path in paths]


def _simplify(path: list[tuple[int, int]], tolerance: float) -> tuple[tuple[float, float], ...]:
    """(x, y) points of a pixel path, Douglas-Peucker-simplified to ``tolerance`` pixels."""
    from skimage.measure import approximate_polygon  # scikit-image: only where cracks are traced

    rc = np.array(path, dtype=float)
    if len(rc) > 2 and tolerance > 0:
        rc = approximate_polygon(rc, tolerance)
    return tuple((float(c), float(r)) for r, c in rc)


def skeleton_distances(crack: np.ndarray, skeleton: np.ndarray) -> np.ndarray:
    """At each skeleton pixel, the Euclidean distance to the nearest non-crack pixel (outside the
    photo counts as non-crack); 0 elsewhere. Exactly ``distance_transform_edt`` of the padded
    mask there (tested), at a cost that follows the crack pixels, not the photo's: the nearest
    non-crack pixel always touches a crack pixel (one step from it towards the skeleton pixel
    is closer, so crack), so a k-d tree of the non-crack pixels that touch cracks holds it. The
    whole-photo transform of a 12 MP mask takes seconds."""
    from scipy.spatial import cKDTree  # scipy: only where cracks are traced

    distance = np.zeros(crack.shape, dtype=np.float64)
    points = np.argwhere(skeleton)
    if not len(points):
        return distance
    padded = np.pad(crack, 1).ravel()  # outside the photo: non-crack
    side = crack.shape[1] + 2
    inside = np.flatnonzero(padded)
    steps = np.array([dr * side + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc])
    around = (inside[:, None] + steps[None, :]).ravel()
    edge = np.unique(around[~padded[around]])
    found, _ = cKDTree(np.stack(np.divmod(edge, side), axis=1)).query(points + 1)
    distance[points[:, 0], points[:, 1]] = found
    return distance


def group_pieces(skeleton: np.ndarray, labels: np.ndarray, count: int, gap_px: float) -> np.ndarray:
    """For each skeleton piece (``labels`` 1..``count``), the crack it belongs to (an array
    indexed by piece label, 0 for the background): pieces whose end comes within ``gap_px`` of
    another piece are one crack, and so on transitively. A crack the decoder sees in stretches,
    with faint gaps between them, is one crack of their summed length, not a crack and some
    specks; no length is added for the gaps. ``gap_px`` 0: each piece its own crack."""
    from scipy.sparse import coo_matrix  # scipy: only where cracks are traced
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    own = np.arange(count + 1)
    if gap_px <= 0 or count < 2:
        return own
    points = np.argwhere(skeleton)
    # Ends: at most one skeleton neighbour, counted over the skeleton's pixels (row-major
    # numbers in the padded photo), not over the whole photo.
    side = skeleton.shape[1] + 2
    flat = (points[:, 0] + 1) * side + points[:, 1] + 1
    neighbours = sum(np.isin(flat + dr * side + dc, flat) for dr, dc in STEPS)
    ends = points[neighbours <= 1]
    if not len(ends):
        return own
    near = cKDTree(points).query_ball_point(ends, gap_px)
    piece = labels[points[:, 0], points[:, 1]]
    a = np.repeat(labels[ends[:, 0], ends[:, 1]], [len(found) for found in near])
    b = piece[np.concatenate(near).astype(np.int64)]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(count + 1, count + 1))
    _, component = connected_components(graph, directed=False)
    # Renumbered 1.. in order of each crack's first piece; the background stays 0.
    _, first, renumbered = np.unique(component[1:], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return np.concatenate([[0], order[renumbered] + 1])


def traced_length(mask: np.ndarray, *, min_length_px: float = 0.0, gap_px: float = 0.0) -> float:
    """The total length (pixels) of the cracks :func:`trace_cracks` finds in ``mask``: what
    ``crackdet predict`` reports as a photo's crack length."""
    cracks, _ = trace_cracks(mask, min_length_px=min_length_px, gap_px=gap_px)
    return float(sum(c.length_px for c in cracks))


def trace_cracks(
    mask: np.ndarray,
    *,
    mm_per_pixel: float | None = None,
    bands: tuple[WidthBand, ...] = DEFAULT_BANDS,
    min_length_px: float = 0.0,
    tolerance: float = 1.0,
    gap_px: float = 0.0,
) -> tuple[list[Crack], np.ndarray]:
    """The cracks in a boolean crack-pixel mask, longest first, and the skeleton they come from.
    Skeleton pieces within ``gap_px`` of each other are one crack (:func:`group_pieces`);
    cracks shorter than ``min_length_px`` are dropped (specks); ``tolerance``: how far (pixels)
    a polyline may stray from the skeleton."""
    from scipy import ndimage  # scipy.ndimage / scikit-image: only where cracks are traced
    from skimage.morphology import skeletonize

    if mm_per_pixel is not None and not (mm_per_pixel > 0 and math.isfinite(mm_per_pixel)):
        raise CrackdetError(f"mm per pixel {mm_per_pixel}: must be a positive number")
    crack = np.asarray(mask, dtype=bool)
    skeleton = skeletonize(crack)
    distance = skeleton_distances(crack, skeleton)
    labels, count = ndimage.label(skeleton, structure=EIGHT)
    pieces = ndimage.find_objects(labels)  # each stretch's own window: its paths walk there
    cracks = group_pieces(skeleton, labels, count, gap_px)[labels]
    found = []
    for index, window in enumerate(ndimage.find_objects(cracks), start=1):
        if window is None:
            continue
        piece = cracks[window] == index
        length = skeleton_length(piece)  # pieces never touch: the sum of their lengths
        if length < min_length_px:
            continue
        widths = 2.0 * distance[window][piece] - 1.0
        rows, cols = np.nonzero(piece)
        y0, x0 = window[0].start, window[1].start
        shifted = [
            [(r + own[0].start, c + own[1].start) for r, c in path]
            for label in np.unique(labels[window][piece])
            for own in [pieces[label - 1]]
            for path in _segments(labels[own] == label)
        ]
        max_width = float(widths.max())
        found.append(
            Crack(
                id=0,
                length_px=length,
                mean_width_px=float(widths.mean()),
                max_width_px=max_width,
                bbox=(
                    int(x0 + cols.min()),
                    int(y0 + rows.min()),
                    int(x0 + cols.max()),
                    int(y0 + rows.max()),
                ),
                branches=len(shifted),
                polylines=tuple(_simplify(path, tolerance) for path in shifted),
                mm_per_pixel=mm_per_pixel,
                severity=severity(
                    None if mm_per_pixel is None else max_width * mm_per_pixel, bands
                ),
            )
        )
    found.sort(key=lambda k: (-k.length_px, k.bbox))
    numbered = [Crack(**{**k.__dict__, "id": number}) for number, k in enumerate(found, start=1)]
    return numbered, skeleton
