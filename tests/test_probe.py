"""The probe baseline: fitted once per distinct input, refitted when its cache file is torn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import crackdet.model.probe as probe_module
from crackdet.model.probe import fit_probe, fit_probe_cached


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 200)
    features = rng.normal(size=(200, 16)).astype(np.float32) + targets[:, None] * 0.8
    return features, targets


def test_cached_probe_is_the_fitted_one_and_is_not_refitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features, targets = _data()
    fitted = fit_probe(features, targets, seed=1)
    first = fit_probe_cached(features, targets, 1, tmp_path)
    assert first == fitted
    [stored] = list(tmp_path.glob("*.json"))

    def refit(*args: object) -> None:
        raise AssertionError("the probe was fitted again")

    monkeypatch.setattr(probe_module, "fit_probe", refit)
    again = fit_probe_cached(features, targets, 1, tmp_path)
    assert again == first
    probabilities = again.crack_probability(features)
    assert np.array_equal(probabilities, fitted.crack_probability(features))
    monkeypatch.undo()
    # Other targets or another seed are other probes, in other files.
    fit_probe_cached(features, 1 - targets, 1, tmp_path)
    fit_probe_cached(features, targets, 2, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 3
    # A torn file is refitted and rewritten whole.
    stored.write_text(stored.read_text()[:50])
    assert fit_probe_cached(features, targets, 1, tmp_path) == fitted
    assert fit_probe_cached(features, targets, 1, tmp_path) == fitted
    assert stored.read_text().rstrip().endswith("}")
