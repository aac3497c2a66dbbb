"""Tolerant crack-pixel scores: a crack traced a pixel off is found; counts add over photos."""

from __future__ import annotations

import numpy as np
import pytest

from crackdet.model.pixel_metrics import PixelCounts, count_pixels, length_error


def line(shape: tuple[int, int], row: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, 10:50] = True
    return mask


def test_a_line_one_pixel_off_scores_perfectly_within_two_but_not_zero() -> None:
    truth, predicted = line((60, 60), 30), line((60, 60), 31)
    tolerant = count_pixels(predicted, truth, tolerance=2)
    assert (tolerant.precision, tolerant.recall, tolerant.f1) == (1.0, 1.0, 1.0)
    strict = count_pixels(predicted, truth, tolerance=0)
    assert strict.f1 == 0.0


def test_a_line_three_pixels_off_is_a_miss_and_a_false_alarm() -> None:
    counts = count_pixels(line((60, 60), 33), line((60, 60), 30), tolerance=2)
    assert counts.correct == 0 and counts.found == 0 and counts.predicted == counts.true == 40


def test_half_found_gives_recall_one_half() -> None:
    truth = line((60, 60), 30)
    predicted = truth.copy()
    predicted[:, 30:] = False
    counts = count_pixels(predicted, truth)
    assert counts.precision == 1.0
    # found: predicted pixels reach two columns further along the line
    assert counts.recall == pytest.approx(22 / 40)


def test_planking_called_crack_counts_planking_pixels_off_the_crack() -> None:
    truth = line((60, 60), 30)
    planking = np.zeros_like(truth)
    planking[5:15, :] = True  # 600 pixels, none on the crack
    predicted = truth.copy()
    predicted[5:8, :] = True  # 180 of them called crack
    counts = count_pixels(predicted, truth, planking)
    assert (counts.planking, counts.planking_called) == (600, 180)
    assert counts.planking_called_share == pytest.approx(0.3)


def test_counts_add_before_dividing() -> None:
    a = count_pixels(line((60, 60), 30), line((60, 60), 30))
    b = count_pixels(np.zeros((60, 60), bool), line((60, 60), 30))
    total = a + b
    assert (total.true, total.found, total.predicted) == (80, 40, 40)
    assert total.recall == 0.5 and total.precision == 1.0


def test_undefined_figures_are_none() -> None:
    empty = count_pixels(np.zeros((8, 8), bool), np.zeros((8, 8), bool))
    assert empty == PixelCounts() and empty.f1 is None and empty.planking_called_share is None
    assert length_error(10.0, 0.0) is None and length_error(12.0, 10.0) == pytest.approx(0.2)


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ"):
        count_pixels(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
