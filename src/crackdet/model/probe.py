"""A logistic-regression probe on the same frozen features: the baseline the recipe must beat.

A linear probe on ImageNet features is already near-perfect on the public set (docs/results.md),
so the head, augmentation and epochs have to earn their keep against it in the same run. Stored
as JSON (no pickle): standardisation and the linear weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError, first_line
from crackdet.core.io import write_json


@dataclass(frozen=True)
class Probe:
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def crack_probability(self, features: np.ndarray) -> np.ndarray:
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Probe:
        return cls(**data)  # type: ignore[arg-type]

    @classmethod
    def read(cls, path: Path) -> Probe | None:
        """The probe train stored (``probe.json``); None when there is none (``{}``: a randomly
        initialised backbone was fine-tuned, so nothing frozen to compare on)."""
        try:
            data = json.loads(path.read_text())
            return cls.from_dict(data) if data else None
        except (OSError, ValueError, TypeError) as exc:
            raise CrackdetError(
                f"{path}: unreadable probe ({first_line(exc)}); rerun the train stage"
            ) from None


SETTINGS = {"C": 1.0, "max_iter": 3000}


def fit_probe(features: np.ndarray, targets: np.ndarray, seed: int) -> Probe:
    # scikit-learn (~0.9 s) only when a probe is fitted, not when a cached one is found.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    model = LogisticRegression(**SETTINGS, random_state=seed)
    model.fit(scaler.transform(features), targets)
    return Probe(
        mean=scaler.mean_.tolist(),
        scale=scaler.scale_.tolist(),
        coef=model.coef_[0].tolist(),
        intercept=float(model.intercept_[0]),
    )


def fit_probe_cached(
    features: np.ndarray, targets: np.ndarray, seed: int, cache: Path | None
) -> Probe:
    """:func:`fit_probe`, kept in ``cache`` under a digest of everything it depends on (the
    features and targets themselves, seed, settings, its code and library versions): a rerun
    that changed only head or optimiser params finds it and skips importing scikit-learn (~1.3 s
    of a train stage). A torn or unreadable file is refitted."""
    if cache is None:
        return fit_probe(features, targets, seed)
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(features, np.float32), np.asarray(targets, np.int64)):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    # This module's code and the libraries whose arithmetic the fit is: an edit refits.
    libraries = [version(name) for name in ("scikit-learn", "scipy", "numpy")]
    digest.update(json.dumps([seed, SETTINGS, libraries]).encode())
    digest.update(Path(__file__).read_bytes())
    path = cache / f"{digest.hexdigest()[:24]}.json"
    try:
        return Probe.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    probe = fit_probe(features, targets, seed)
    write_json(path, probe.to_dict())
    return probe
