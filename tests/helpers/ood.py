"""OOD model files for tests that feed crackdet a well-formed or a broken ``ood.npz``."""

from __future__ import annotations

import numpy as np


def ood_arrays(**changes: np.ndarray) -> dict[str, np.ndarray]:
    """A consistent OOD model's arrays (8 features, 3 components), with ``changes`` applied."""
    arrays = {
        "mean": np.zeros(8),
        "components": np.eye(8)[:3],
        "scale": np.ones(3),
        "residual_scale": np.array(1.0),
        "threshold": np.array(2.0),
    }
    return arrays | changes
