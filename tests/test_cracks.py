"""Measured cracks (crackdet.maps.cracks) on drawn masks whose length and width are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crackdet.core.errors import CrackdetError
from crackdet.maps.cracks import (
    DEFAULT_BANDS,
    WidthBand,
    check_bands,
    crack_mask,
    severity,
    skeleton_length,
    trace_cracks,
)


def bar(width: int, length: int, shape=(60, 200), top: int = 20, left: int = 30) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + width, left : left + length] = True
    return mask


@pytest.mark.parametrize("width", [1, 3, 5, 7])
def test_straight_crack_length_and_width(width: int) -> None:
    cracks, skeleton = trace_cracks(bar(width, 120))
    assert len(cracks) == 1
    crack = cracks[0]
    # The skeleton of a bar stops about half a width short of each end.
    assert 120 - width - 1 <= crack.length_px <= 120
    assert crack.max_width_px == pytest.approx(width, abs=0.01)
    assert crack.mean_width_px == pytest.approx(width, abs=1.0)
    assert crack.branches == 1
    assert skeleton.sum() == pytest.approx(crack.length_px + 1, abs=1)


def test_diagonal_steps_count_sqrt2_and_l_corners_do_not_double_count() -> None:
    diagonal = np.eye(50, dtype=bool)
    assert skeleton_length(diagonal) == pytest.approx(49 * math.sqrt(2))
    corner = np.zeros((5, 5), dtype=bool)
    corner[0, 0:3] = True
    corner[0:3, 2] = True  # an L: 2 right, 2 down
    assert skeleton_length(corner) == pytest.approx(4.0)


def test_two_cracks_longest_first_with_boxes() -> None:
    mask = bar(3, 120) | bar(3, 40, top=45, left=100)
    cracks, _ = trace_cracks(mask)
    assert [c.id for c in cracks] == [1, 2]
    assert cracks[0].length_px > cracks[1].length_px
    x0, y0, x1, y1 = cracks[1].bbox
    assert 100 <= x0 < x1 <= 139 and 45 <= y0 <= y1 <= 47


def test_branches_of_a_y_and_a_closed_loop() -> None:
    mask = np.zeros((80, 80), dtype=bool)
    mask[40, 10:40] = True  # stem
    for i in range(25):  # two arms from (40, 40)
        mask[40 - i, 40 + i] = True
        mask[40 + i, 40 + i] = True
    cracks, _ = trace_cracks(mask)
    assert len(cracks) == 1 and cracks[0].branches == 3
    ring = np.zeros((60, 60), dtype=bool)
    yy, xx = np.mgrid[:60, :60]
    ring[(np.hypot(yy - 30, xx - 30) > 18) & (np.hypot(yy - 30, xx - 30) < 21)] = True
    (loop,), _ = trace_cracks(ring)
    assert loop.branches == 1
    assert loop.length_px == pytest.approx(2 * math.pi * 19.5, rel=0.1)
    assert loop.polylines[0][0] == loop.polylines[0][-1]  # closed


def test_polylines_follow_the_skeleton_in_x_y() -> None:
    (crack,), _ = trace_cracks(bar(3, 100, top=10, left=20))
    (line,) = crack.polylines
    xs, ys = zip(*line, strict=True)
    assert len(line) == 2  # a straight crack simplifies to its two ends
    assert min(xs) >= 20 and max(xs) <= 119 and set(ys) <= {10.0, 11.0, 12.0}


def test_millimetres_and_severity() -> None:
    (crack,), _ = trace_cracks(bar(5, 100), mm_per_pixel=0.1)
    assert crack.max_width_mm == pytest.approx(0.5)
    assert crack.length_mm == pytest.approx(crack.length_px * 0.1)
    assert crack.severity == "moderate"
    (unknown,), _ = trace_cracks(bar(5, 100))
    assert unknown.length_mm is None and unknown.severity == ""
    assert unknown.row()["length_mm"] == ""
    assert severity(0.29) == "insignificant"
    assert severity(0.3) == "moderate"
    assert severity(1.27) == "wide"


def test_specks_are_dropped_and_empty_masks_give_nothing() -> None:
    mask = bar(3, 100)
    mask[50, 190] = True
    cracks, _ = trace_cracks(mask, min_length_px=5)
    assert len(cracks) == 1
    assert trace_cracks(np.zeros((10, 10), dtype=bool))[0] == []


def test_a_crack_seen_in_stretches_is_one_crack_of_their_length() -> None:
    """Three stretches of one crack with 4-px gaps: three cracks without grouping, one within a
    6-px gap (the stretches' summed length: no length for the gaps, every stretch a polyline);
    a crack 30 px away stays apart; grouped specks reach the minimum length together."""
    mask = np.zeros((80, 200), dtype=bool)
    for x0 in (20, 64, 108):
        mask[20, x0 : x0 + 40] = True  # 40 px, then a gap of 4
    mask[50, 20:148] = True  # another crack, 30 px below
    alone = trace_cracks(mask)[0]
    assert sorted(c.length_px for c in alone) == [39.0, 39.0, 39.0, 127.0]
    grouped = trace_cracks(mask, gap_px=6)[0]
    assert [c.length_px for c in grouped] == [127.0, 117.0]
    joined = grouped[1]
    assert joined.branches == 3 and len(joined.polylines) == 3
    assert joined.bbox == (20, 20, 147, 20)
    # 4 empty pixels: the ends are 5 px apart (centre to centre), not within 4.9.
    assert len(trace_cracks(mask, gap_px=4.9)[0]) == 4
    specks = np.zeros((30, 60), dtype=bool)
    specks[10, 10:16] = specks[10, 19:25] = True  # two 6-px specks, 3 px apart
    assert trace_cracks(specks, min_length_px=10)[0] == []
    (together,) = trace_cracks(specks, min_length_px=10, gap_px=5)[0]
    assert together.length_px == 10.0


@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_mm_per_pixel_is_one_line(value: float) -> None:
    with pytest.raises(CrackdetError, match="mm per pixel"):
        trace_cracks(bar(3, 50), mm_per_pixel=value)


@pytest.mark.parametrize(
    ("bands", "words"),
    [
        ((), "no bands"),
        ((WidthBand("a", 1.0), WidthBand("a", None)), "repeat"),
        ((WidthBand("a", 1.0), WidthBand("b", 2.0)), "no upper bound"),
        ((WidthBand("a", 1.0), WidthBand("b", 0.5), WidthBand("c", None)), "out of order"),
        ((WidthBand("a", -1.0), WidthBand("b", None)), "positive"),
        ((WidthBand("a", None), WidthBand("b", None)), "only the last"),
    ],
)
def test_width_bands_are_checked(bands: tuple[WidthBand, ...], words: str) -> None:
    with pytest.raises(CrackdetError, match=words):
        check_bands(bands)
    check_bands(DEFAULT_BANDS)


def test_skeleton_distances_equal_the_whole_mask_transform() -> None:
    """The k-d tree distances are what distance_transform_edt of the padded mask gives at every
    skeleton pixel: cracks 1 to 60 px wide, some through the photo's borders."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    from crackdet.maps.cracks import skeleton_distances

    rng = np.random.default_rng(3)
    mask = np.zeros((300, 410), dtype=bool)
    yy, xx = np.mgrid[:300, :410]
    for _ in range(12):  # thick and thin strokes, some through the border
        y, x, angle = rng.uniform(0, 300), rng.uniform(0, 410), rng.uniform(0, np.pi)
        half = rng.choice([0.5, 1.5, 4.0, 30.0])
        off = np.abs((yy - y) * np.cos(angle) - (xx - x) * np.sin(angle))
        along = np.abs((yy - y) * np.sin(angle) + (xx - x) * np.cos(angle))
        mask |= (off <= half) & (along <= rng.uniform(20, 200))
    skeleton = skeletonize(mask)
    whole = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    near = skeleton_distances(mask, skeleton)
    assert whole[skeleton].max() > 16 and whole[skeleton].min() == 1
    assert np.array_equal(near[skeleton], whole[skeleton])
    assert not near[~skeleton].any()


def _segments_by_sets(piece: np.ndarray) -> list[list[tuple[int, int]]]:
    """The walk _segments replaced (pixel tuples in sets; simple, slow on a 12 MP photo): the
    reference it must match path for path."""
    from scipy import ndimage

    s = piece.astype(np.uint8)
    degree = np.where(piece, ndimage.convolve(s, np.ones((3, 3), np.uint8), mode="constant") - s, 0)
    nodes = {tuple(p) for p in np.argwhere(piece & (degree != 2))}
    pixels = {tuple(p) for p in np.argwhere(piece)}
    used: set = set()
    paths: list = []

    def steps(p):
        r, c = p
        around = [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
        around.sort(key=lambda q: abs(q[0] - r) + abs(q[1] - c))
        return [q for q in around if q in pixels]

    def walk(start, first):
        path, prev, here = [start], start, first
        used.add(frozenset((start, first)))
        while True:
            path.append(here)
            if here in nodes or here == start:
                return path
            nxt = [q for q in steps(here) if q != prev and frozenset((here, q)) not in used]
            if not nxt:
                return path
            used.add(frozenset((here, nxt[0])))
            prev, here = here, nxt[0]

    for node in sorted(nodes):
        for q in steps(node):
            if frozenset((node, q)) not in used:
                paths.append(walk(node, q))
    if not paths and pixels:
        start = min(pixels)
        paths.append(walk(start, steps(start)[0]))
    return [[(int(r), int(c)) for r, c in path] for path in paths]


def test_segments_walk_the_same_paths_as_the_set_walk() -> None:
    from scipy import ndimage
    from skimage.morphology import skeletonize

    from crackdet.data.sources.synthetic import render_photo
    from crackdet.maps.cracks import _segments

    _, drawn = render_photo(np.random.default_rng(5), 640, 480, n_cracks=3)
    rng = np.random.default_rng(4)
    noisy = rng.random((120, 160)) < 0.3  # blobs, junctions, loops, lone pixels
    ring = np.zeros((40, 40), dtype=bool)
    ring[10, 10:30] = ring[29, 10:30] = ring[10:30, 10] = ring[10:30, 29] = True
    pieces = 0
    for mask in (drawn > 0, ndimage.binary_opening(noisy), ring):
        skeleton = skeletonize(mask)
        labels, _ = ndimage.label(skeleton, structure=np.ones((3, 3), bool))
        for index, window in enumerate(ndimage.find_objects(labels), start=1):
            piece = labels[window] == index
            if piece.sum() > 1:
                assert _segments(piece) == _segments_by_sets(piece)
                pieces += 1
    assert pieces > 20


def test_hysteresis_joins_a_faint_stretch_to_the_crack_it_touches_and_nothing_else() -> None:
    p = np.zeros((20, 60), dtype=np.float32)
    p[10, 5:25] = 0.9  # a clear stretch
    p[10, 25:35] = 0.4  # faint, touching it
    p[10, 35:55] = 0.9  # clear again
    p[3, 5:30] = 0.4  # faint, alone: not a crack
    assert crack_mask(p, 0.5).sum() == 40  # off: two pieces
    joined = crack_mask(p, 0.5, 0.5)
    assert joined.sum() == 50 and not joined[3].any()
    assert len(trace_cracks(joined)[0]) == 1 and len(trace_cracks(crack_mask(p, 0.5))[0]) == 2
    assert not crack_mask(np.full((4, 4), 0.3), 0.5, 0.5).any()  # no clear pixel: none
