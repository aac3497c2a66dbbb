"""Out-of-distribution signal: how far a tile's backbone features are from the training data.

Models trained only on concrete patches fire on things that are not concrete (painted walls,
furniture, sky). A crack map should say where it does not know, without hiding what it sees:
the training features of every source (plain view) are projected on their top principal
components, and a tile's score combines its whitened distance in that space (a Mahalanobis
distance with a diagonal covariance after PCA) with its distance from the subspace, normalised by
what held-out validation features show. The threshold is the ``train.ood_quantile`` quantile
of the validation images' scores (0.95: about 5 % of patches like the training sources' are
flagged), so concrete from another source is not flagged wholesale while images that are not
concrete surfaces are. Stored as ``outputs/train/ood.npz`` (plain arrays, no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackdet.core.errors import CrackdetError
from crackdet.core.io import read_npz, write_npz

COMPONENTS = 64
QUANTILE = 0.95  # as params.yaml train.ood_quantile

# What reruns train and everything that reads its outputs (a bare `-f train` stops at train).
RERUN = "dvc repro --force --downstream train"


@dataclass(frozen=True)
class OODModel:
    mean: np.ndarray  # (F,)
    components: np.ndarray  # (k, F), orthonormal rows
    scale: np.ndarray  # (k,) standard deviation of the training projections
    residual_scale: float  # typical distance of held-out features from the PCA subspace
    threshold: float
    origin: str = field(default="OOD model", compare=False)  # the file it was read from

    def score(self, features: np.ndarray) -> np.ndarray:
        """Whitened distance inside the PCA subspace plus the normalised distance outside it
        (what the subspace cannot represent at all is the clearest sign of novelty)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            given = features.shape[-1] if features.ndim else 0
            raise CrackdetError(
                f"{self.origin}: OOD model fits {self.mean.shape[0]} features, the model gives "
                f"{given} (a model of another backbone); rerun train ({RERUN})"
            )
        centred = features - self.mean
        projected = centred @ self.components.T
        residual = _residual(centred, projected)
        inside = np.mean((projected / self.scale) ** 2, axis=1)
        return np.sqrt((inside + (residual / self.residual_scale) ** 2) / 2)

    def is_ood(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    def save(self, path: Path) -> None:
        write_npz(
            path,
            {
                "mean": self.mean,
                "components": self.components,
                "scale": self.scale,
                "residual_scale": np.array(self.residual_scale),
                "threshold": np.array(self.threshold),
            },
        )

    @classmethod
    def load(cls, path: Path) -> OODModel | None:
        """The OOD model beside a checkpoint; None when there is none (no file, or the empty
        file train writes when it has no features to fit one on)."""
        if not path.exists():
            return None
        try:
            data = read_npz(path)
        except CrackdetError as exc:
            raise CrackdetError(f"{exc}; rerun train and the stages after it ({RERUN})") from None
        if "mean" not in data:
            return None
        missing = {"components", "scale", "residual_scale", "threshold"} - set(data)
        if missing:
            raise CrackdetError(
                f"{path}: OOD model lacks {', '.join(sorted(missing))} (written by another "
                "crackdet version); rerun train"
            )
        problem = _malformed(data)
        if problem:
            raise CrackdetError(f"{path}: not a valid OOD model ({problem}); rerun train ({RERUN})")
        return cls(
            data["mean"].astype(np.float64),
            data["components"].astype(np.float64),
            data["scale"].astype(np.float64),
            float(data["residual_scale"]),
            float(data["threshold"]),
            str(path),
        )


def _malformed(data: dict[str, np.ndarray]) -> str:
    """What is wrong with an OOD model's arrays ("" when nothing): a file is checked whole on
    load, so a damaged one cannot fail half way through a map or flag nothing (a NaN
    threshold compares false with every score)."""
    for name in ("mean", "components", "scale", "residual_scale", "threshold"):
        if data[name].dtype.kind not in "fiu":
            return f"{name} is not numeric"
        if not np.isfinite(data[name]).all():
            return f"{name} is not finite"
    mean, components, scale = data["mean"], data["components"], data["scale"]
    if mean.ndim != 1:
        return f"mean is {'x'.join(map(str, mean.shape))}, expected one row"
    if components.ndim != 2 or components.shape[1] != len(mean) or not len(components):
        rows = len(components) if components.ndim == 2 and len(components) else "k"
        return f"components is {'x'.join(map(str, components.shape))}, expected {rows}x{len(mean)}"
    if scale.ndim != 1 or len(scale) != len(components):
        return f"scale has {scale.size} values, expected {len(components)}"
    for name in ("residual_scale", "threshold"):
        if data[name].size != 1:
            return f"{name} is not one number"
    if (scale <= 0).any() or float(data["residual_scale"]) <= 0:
        return f"{'scale' if (scale <= 0).any() else 'residual_scale'} must be above 0"
    return ""


def fit_ood(
    train_features: np.ndarray, val_features: np.ndarray, quantile: float = QUANTILE
) -> OODModel:
    """PCA on the training features (every training source); threshold: the ``quantile`` of the
    held-out validation scores (of every source), so about ``1 - quantile`` of patches like the
    training data are flagged and concrete from another source is not flagged wholesale."""
    features = np.asarray(train_features, np.float64)
    mean = features.mean(axis=0)
    # Principal axes from the F x F scatter matrix (eigh) rather than an SVD of the N x F data:
    # the same axes, at a cost linear in N (0.3 s instead of 1.3 s for 2,800 x 1,280 here).
    centred_train = features - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred_train.T @ centred_train)
    order = np.argsort(eigenvalues)[::-1]
    singular = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    vt = eigenvectors[:, order].T
    # Few training images give near-zero trailing variances that would blow the whitened
    # distance up: keep at most a quarter as many components as images.
    k = max(1, min(COMPONENTS, len(features) // 4, len(singular)))
    components = vt[:k]
    scale = singular[:k] / np.sqrt(max(len(features) - 1, 1))
    scale = np.maximum(scale, 1e-3 * scale[0] + 1e-12)
    centred = np.asarray(val_features, np.float64) - mean
    residual = _residual(centred, centred @ components.T)
    residual_scale = max(float(np.median(residual)), 1e-6)
    model = OODModel(mean, components, scale, residual_scale, threshold=float("inf"))
    threshold = float(np.quantile(model.score(val_features), quantile))
    return OODModel(mean, components, scale, residual_scale, threshold)


def _residual(centred: np.ndarray, projected: np.ndarray) -> np.ndarray:
    """Distance from the PCA subspace. The components are orthonormal, so
    |residual|^2 = |centred|^2 - |projected|^2: no reconstruction in feature space needed."""
    squared = np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", projected, projected)
    return np.sqrt(np.maximum(squared, 0.0))


def save_empty(path: Path) -> None:
    """No OOD model (e.g. fine-tuning without frozen features): an empty, valid file."""
    write_npz(path, {})
