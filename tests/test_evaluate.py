"""What a test figure can claim: interval of the accuracy, paired comparison with the probe."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from crackdet.model.metrics import (
    Evaluation,
    compare_with_baseline,
    mcnemar_exact,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n"), [(598, 600), (600, 600), (0, 10), (57, 120), (1, 1)])
def test_wilson_interval_matches_scipy(successes: int, n: int) -> None:
    expected = stats.binomtest(successes, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected.low, abs=1e-9)
    assert high == pytest.approx(expected.high, abs=1e-9)


@pytest.mark.parametrize(("b", "c"), [(2, 0), (0, 2), (3, 9), (10, 10), (1, 30), (0, 0)])
def test_mcnemar_exact_matches_a_binomial_test(b: int, c: int) -> None:
    expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert mcnemar_exact(b, c) == pytest.approx(expected, abs=1e-12)


def test_comparison_counts_the_images_each_alone_gets_wrong() -> None:
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    model = Evaluation(targets, np.array([0.9, 0.2, 0.3, 0.8, 0.1, 0.1, 0.6, 0.2]), 0.5)
    probe = Evaluation(targets, np.array([0.9, 0.9, 0.2, 0.4, 0.7, 0.1, 0.6, 0.2]), 0.5)
    # wrong: model on images 1, 2, 6; probe on 2, 3, 4, 6
    result = compare_with_baseline(model, probe)
    assert result["only_model_wrong"] == 1 and result["only_baseline_wrong"] == 2
    assert result["mcnemar_p"] == pytest.approx(mcnemar_exact(1, 2))
    assert compare_with_baseline(model, model)["mcnemar_p"] == 1.0
    metrics = model.metrics()
    assert metrics["accuracy_ci95_low"] < metrics["accuracy"] < metrics["accuracy_ci95_high"]
