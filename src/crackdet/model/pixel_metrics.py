"""Crack-pixel scores with a distance tolerance, as crack-segmentation benchmarks count them.

A crack one or two pixels wide, traced one pixel off, is found, not missed twice: a predicted
crack pixel is *correct* when a true crack pixel lies within ``tolerance`` pixels (Euclidean)
of it, and a true crack pixel is *found* when a predicted one lies within ``tolerance`` of it.
Precision is the correct share of predicted pixels, recall the found share of true pixels (the
CrackForest / DeepCrack convention, tolerance 2 px). Planking (formwork wood grain, a classic
false alarm) is scored apart: the share of planking pixels, not crack, that are called crack.

Counts, not ratios, are what :class:`PixelCounts` holds, so photos add up before dividing: a
data set's F1 is not the mean of its photos' F1s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 2.0  # pixels


@dataclass(frozen=True)
class PixelCounts:
    """Tolerant counts over one photo or several (``+`` adds them)."""

    predicted: int = 0  # pixels called crack
    correct: int = 0  # of those, within the tolerance of a true crack pixel
    true: int = 0  # true crack pixels
    found: int = 0  # of those, within the tolerance of a predicted crack pixel
    planking: int = 0  # planking pixels that are not crack
    planking_called: int = 0  # of those, called crack

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(
            *(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__)
        )

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.found / self.true if self.true else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def planking_called_share(self) -> float | None:
        return self.planking_called / self.planking if self.planking else None


def within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within ``tolerance`` (Euclidean) of a set pixel of ``mask``."""
    from scipy import ndimage  # scipy: only where pixels are scored

    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return ndimage.distance_transform_edt(~mask) <= tolerance


def count_pixels(
    predicted: np.ndarray,
    truth: np.ndarray,
    planking: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
) -> PixelCounts:
    """Tolerant counts of one photo: boolean masks of one shape (``planking`` optional)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and true {truth.shape} masks differ")
    near_true, near_predicted = within(truth, tolerance), within(predicted, tolerance)
    plank = np.zeros_like(truth) if planking is None else np.asarray(planking, bool) & ~truth
    return PixelCounts(
        predicted=int(predicted.sum()),
        correct=int((predicted & near_true).sum()),
        true=int(truth.sum()),
        found=int((truth & near_predicted).sum()),
        planking=int(plank.sum()),
        planking_called=int((plank & predicted).sum()),
    )


def length_error(predicted_length: float, true_length: float) -> float | None:
    """Relative error of a measured crack length against the truth's (None: no true crack)."""
    if true_length <= 0:
        return None
    return abs(predicted_length - true_length) / true_length
