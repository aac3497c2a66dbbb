"""Temperature scaling, the F1-optimal threshold and ECE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crackdet.model.calibrate import (
    expected_calibration_error,
    f1_optimal_threshold,
    fit_temperature,
)


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose true temperature is 3: a model 3x too sure of itself."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.0, size=n)
    p = 1 / (1 + np.exp(-margin))
    targets = (rng.random(n) < p).astype(np.int64)
    logits = np.stack([np.zeros(n), 3.0 * margin], axis=1)
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(targets)


def test_temperature_recovers_overconfidence_and_lowers_ece() -> None:
    logits, targets = _overconfident()
    temperature = fit_temperature(logits, targets)
    assert temperature == pytest.approx(3.0, rel=0.15)
    raw = torch.softmax(logits, 1)[:, 1].numpy()
    calibrated = torch.softmax(logits / temperature, 1)[:, 1].numpy()
    assert expected_calibration_error(calibrated, targets.numpy()) < 0.5 * (
        expected_calibration_error(raw, targets.numpy())
    )


def test_perfect_calibration_has_small_ece_and_confident_wrongs_large() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.where(y == 1, 0.01, 0.99), y) > 0.9


def test_f1_optimal_threshold() -> None:
    # Clearly better below 0.5: 20 positives sit at 0.3, negatives at 0.1.
    probs = np.array([0.1] * 20 + [0.3] * 20 + [0.9] * 20)
    targets = np.array([0] * 20 + [1] * 40)
    assert f1_optimal_threshold(probs, targets) == pytest.approx(0.2)
    # Separable: every threshold in (0.2, 0.7) is perfect, the one at 0.5 is kept.
    separable = np.array([0.1, 0.2, 0.7, 0.9])
    assert f1_optimal_threshold(separable, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_threshold_is_not_chased_for_one_example() -> None:
    rng = np.random.default_rng(3)
    targets = np.array([1] * 300 + [0] * 300)
    probs = np.where(targets == 1, rng.uniform(0.96, 1.0, 600), rng.uniform(0.0, 0.04, 600))
    probs[400] = 0.94  # one negative scored high: a threshold of 0.945 would fix it alone
    assert f1_optimal_threshold(probs, targets) == pytest.approx(0.5)
