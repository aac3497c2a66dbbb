"""Tests for the procedural synthetic concrete renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crackdet.data.images import PATCH_SIZE
from crackdet.data.sources.synthetic import (
    patch_rng,
    render_patch,
    render_photo,
    write_patch_set,
    write_photo_set,
)

N_STATS = 200  # patches per class for the statistical tests (~3 s to render)


@pytest.fixture(scope="module")
def patches() -> tuple[list[np.ndarray], np.ndarray]:
    """A fixed sample of rendered patches and their labels (1 = crack)."""
    images, labels = [], []
    for label, crack in (("Positive", True), ("Negative", False)):
        for i in range(1, N_STATS + 1):
            images.append(render_patch(patch_rng(123, label, i), crack))
            labels.append(int(crack))
    return images, np.array(labels)


def _bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def _longest_dark_thin_extent(img: np.ndarray) -> float:
    """Bounding-box extent (fraction of the side) of the largest thin dark structure.

    Black top-hat (closing minus image) with a 9x9 window keeps only dark features narrower
    than ~9 px; the biggest 8-connected blob above 12 grey levels is measured. A crack crosses
    the patch; pores and blotches stay small or are removed by the top-hat.
    """
    grey = img.astype(np.float32).mean(axis=2)
    tophat = ndimage.grey_closing(grey, size=(9, 9)) - grey
    lab, n = ndimage.label(tophat > 12, structure=np.ones((3, 3)))
    if n == 0:
        return 0.0
    spans = [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(lab)]
    return max(spans) / grey.shape[0]


def test_render_patch_shape_and_dtype() -> None:
    for crack in (True, False):
        img = render_patch(np.random.default_rng(0), crack)
        assert img.shape == (PATCH_SIZE, PATCH_SIZE, 3)
        assert img.dtype == np.uint8
        assert img.std() > 1.0  # not a flat or blank image
    small = render_patch(np.random.default_rng(0), True, size=64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8


def test_render_photo_shape_dtype_and_mask() -> None:
    img, mask = render_photo(np.random.default_rng(1), width=400, height=300, n_cracks=2)
    assert img.shape == (300, 400, 3) and img.dtype == np.uint8
    assert mask.shape == (300, 400) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}
    # Long cracks: mask pixels must span a good part of the photo, not a dot.
    ys, xs = np.nonzero(mask)
    assert max(np.ptp(ys) / 300, np.ptp(xs) / 400) > 0.5


def test_render_photo_without_cracks_has_empty_mask() -> None:
    _, mask = render_photo(np.random.default_rng(2), width=300, height=200, n_cracks=0)
    assert not mask.any()


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_photo_cracks_are_darker_than_surroundings(seed: int) -> None:
    img, mask = render_photo(np.random.default_rng(seed), width=640, height=480, n_cracks=2)
    grey = img.astype(np.float32).mean(axis=2)
    crack = mask > 0
    ring = ndimage.binary_dilation(crack, iterations=6) & ~ndimage.binary_dilation(
        crack, iterations=2
    )
    assert crack.sum() > 200
    assert grey[crack].mean() < grey[ring].mean() - 10


def test_patch_rng_is_keyed_by_seed_label_and_index() -> None:
    def draw(seed: int, label: str, index: int) -> np.ndarray:
        return patch_rng(seed, label, index).integers(0, 2**32, 8)

    same = draw(1, "Positive", 3)
    np.testing.assert_array_equal(same, draw(1, "Positive", 3))
    for other in (draw(2, "Positive", 3), draw(1, "Negative", 3), draw(1, "Positive", 4)):
        assert not np.array_equal(same, other)


def test_write_patch_set_layout(tmp_path: Path) -> None:
    entries = write_patch_set(tmp_path, n_per_class=3, seed=0)
    expected = [f"{lab}/{i:05d}.jpg" for lab in ("Negative", "Positive") for i in (1, 2, 3)]
    assert [rel for rel, _ in entries] == expected
    assert entries == sorted(entries)
    assert all(rel.split("/")[0] == lab for rel, lab in entries)
    assert sorted(_bytes(tmp_path)) == expected  # nothing else written
    with Image.open(tmp_path / "Positive" / "00001.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (PATCH_SIZE, PATCH_SIZE)


def test_write_patch_set_is_deterministic(tmp_path: Path) -> None:
    write_patch_set(tmp_path / "a", n_per_class=4, seed=11)
    write_patch_set(tmp_path / "b", n_per_class=4, seed=11)
    write_patch_set(tmp_path / "c", n_per_class=4, seed=12)
    a, b, c = (_bytes(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_adding_images_keeps_existing_ones(tmp_path: Path) -> None:
    write_patch_set(tmp_path / "five", n_per_class=5, seed=7)
    write_patch_set(tmp_path / "ten", n_per_class=10, seed=7)
    five, ten = _bytes(tmp_path / "five"), _bytes(tmp_path / "ten")
    assert len(five) == 10 and len(ten) == 20
    assert all(ten[k] == v for k, v in five.items())


def test_write_photo_set_names_and_determinism(tmp_path: Path) -> None:
    paths = write_photo_set(tmp_path / "a", n_photos=2, seed=5, width=320, height=240)
    assert [p.name for p in paths] == ["photo_01.jpg", "photo_02.jpg"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["photo_01.jpg", "photo_02.jpg"]
    with Image.open(paths[0]) as im:
        assert im.format == "JPEG" and im.size == (320, 240)
    write_photo_set(tmp_path / "b", n_photos=2, seed=5, width=320, height=240)
    write_photo_set(tmp_path / "c", n_photos=2, seed=6, width=320, height=240)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    assert _bytes(tmp_path / "a")["photo_01.jpg"] != _bytes(tmp_path / "c")["photo_01.jpg"]


def test_full_size_photo_file_is_a_few_hundred_kb(tmp_path: Path) -> None:
    (path,) = write_photo_set(tmp_path, n_photos=1, seed=0)
    with Image.open(path) as im:
        assert im.size == (1600, 1200)
    assert 20_000 < path.stat().st_size < 500_000


def test_positives_contain_long_thin_dark_structures_more_often(patches) -> None:
    images, labels = patches
    long_dark = np.array([_longest_dark_thin_extent(im) > 0.5 for im in images])
    pos_rate, neg_rate = long_dark[labels == 1].mean(), long_dark[labels == 0].mean()
    assert pos_rate > 0.8
    # Negatives have joints and straight lines too, but far less often than every patch.
    assert pos_rate - neg_rate > 0.4


def test_mean_and_std_are_no_shortcut(patches) -> None:
    images, labels = patches
    feats = np.array([np.r_[im.reshape(-1, 3).mean(0), im.reshape(-1, 3).std(0)] for im in images])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    score = cross_val_score(model, feats, labels, cv=cv).mean()
    assert score < 0.75


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_patch(np.random.default_rng(0), True, size=8),
        lambda: render_photo(np.random.default_rng(0), width=10, height=10),
        lambda: render_photo(np.random.default_rng(0), n_cracks=-1),
        lambda: patch_rng(-1, "Positive", 1),
        lambda: write_patch_set(Path("unused"), n_per_class=-1, seed=0),
        lambda: write_photo_set(Path("unused"), n_photos=-1, seed=0),
    ],
)
def test_invalid_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()
