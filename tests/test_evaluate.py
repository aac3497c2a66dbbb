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


def test_wilson_interval_matches_scipy_on_a_grid() -> None:
    # scipy is the oracle, not the implementation: its float arithmetic differs in the last bit
    # for about half of these (up to 3.3e-16), and metrics.json prints the interval in full.
    for level in (0.95, 0.99):
        for n in (*range(1, 41), 57, 224, 600):
            for successes in range(n + 1):
                ci = stats.binomtest(successes, n).proportion_ci(level, method="wilson")
                low, high = wilson_interval(successes, n, level)
                assert abs(low - ci.low) <= 1e-15 and abs(high - ci.high) <= 1e-15, (successes, n)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_matches_a_binomial_test_on_a_grid() -> None:
    for b in range(30):
        for c in range(30):
            expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
            assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-13, abs=1e-300), (b, c)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(2, 0) == 0.5


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
