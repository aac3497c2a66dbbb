"""Evaluation on a labelled split: probabilities, metrics with intervals, and the comparison
with the probe baseline on the same images."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm

from crackdet.core.errors import CrackdetError
from crackdet.data.manifest import ManifestRow
from crackdet.model.calibrate import expected_calibration_error
from crackdet.model.classifier import CrackClassifier, build_classifier
from crackdet.model.engines import FeatureFn, effective_engine, feature_fn
from crackdet.model.features import FeatureCache, cache_key, features_for
from crackdet.model.inputs import load_images


@dataclass(frozen=True)
class Evaluation:
    targets: np.ndarray  # 0/1 per image
    probabilities: np.ndarray  # crack probability per image
    threshold: float

    @property
    def predictions(self) -> np.ndarray:
        return (self.probabilities >= self.threshold).astype(int)

    def metrics(self) -> dict[str, float | int | list[list[int]]]:
        y, p = self.targets, self.predictions
        tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel().tolist()
        both_classes = len(np.unique(y)) == 2
        low, high = wilson_interval(tn + tp, len(y))
        return {
            "accuracy": float(skm.accuracy_score(y, p)),
            "accuracy_ci95_low": low,
            "accuracy_ci95_high": high,
            "precision": float(skm.precision_score(y, p, zero_division=0)),
            "recall": float(skm.recall_score(y, p, zero_division=0)),
            "f1": float(skm.f1_score(y, p, zero_division=0)),
            "roc_auc": float(skm.roc_auc_score(y, self.probabilities)) if both_classes else 0.0,
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "tp": tp,
            "n": len(y),
            "threshold": float(self.threshold),
            "ece": expected_calibration_error(self.probabilities, y),
            "confusion_matrix": [[tn, fp], [fn, tp]],
        }

    def subset(self, keep: np.ndarray) -> Evaluation:
        return Evaluation(self.targets[keep], self.probabilities[keep], self.threshold)

    def summary(self) -> dict[str, float | int]:
        """The headline figures of a part of the images (a source, the accepted ones): counts,
        accuracy with its interval, and ROC AUC where both classes are present (else absent)."""
        y, p = self.targets, self.predictions
        correct = int(np.sum(p == y))
        low, high = wilson_interval(correct, len(y))
        figures: dict[str, float | int] = {
            "n": len(y),
            "positives": int(y.sum()),
            "accuracy": correct / len(y) if len(y) else 0.0,
            "accuracy_ci95_low": low,
            "accuracy_ci95_high": high,
        }
        if 0 < y.sum() < len(y):
            figures["roc_auc"] = float(skm.roc_auc_score(y, self.probabilities))
        return figures


def per_source(evaluation: Evaluation, sources: list[str]) -> dict[str, dict[str, float | int]]:
    """:meth:`Evaluation.summary` of each source's images (``sources``: one name per image)."""
    names = np.array(sources)
    return {name: evaluation.subset(names == name).summary() for name in sorted(set(sources))}


def coverage(evaluation: Evaluation, flagged: np.ndarray) -> dict[str, float | int]:
    """Risk and coverage: the share of images the OOD model flags as unlike the training data,
    and the figures on the ones it accepts (what an inspector relies on)."""
    accepted = evaluation.subset(~flagged).summary()
    return {
        "ood_share": float(np.mean(flagged)) if len(flagged) else 0.0,
        **{f"accepted_{key}": value for key, value in accepted.items()},
    }


@torch.inference_mode()
def predict_probabilities(
    model: torch.nn.Module,
    images_dir: Path,
    rows: list[ManifestRow],
    batch_size: int,
    features_fn: FeatureFn | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crack probability of each image from any model taking float RGB [0, 1] NCHW (a checkpoint
    or a registry model), read and batched in chunks to bound memory. ``features_fn``: a crackdet
    classifier's backbone features by an engine (crackdet.model.engines), then its head; the
    features come back too (None for a registry model, which is one black box)."""
    model.eval()
    probs, features = [], []
    for start in range(0, len(rows), batch_size):
        batch = load_images(images_dir, rows[start : start + batch_size]).float() / 255.0
        if features_fn is not None:
            features.append(features_fn(batch))
            logits = model.logits_from_features(features[-1])  # type: ignore[operator]
        else:
            logits = model(batch)
        probs.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    stacked = torch.cat(features).numpy() if features else None
    return (np.concatenate(probs) if probs else np.zeros(0)), stacked


def score_rows_with_features(
    model: torch.nn.Module,
    images_dir: Path,
    rows: list[ManifestRow],
    batch_size: int,
    threshold: float = 0.5,
    features_fn: FeatureFn | None = None,
) -> tuple[Evaluation, np.ndarray | None]:
    """The rows' :class:`Evaluation` and the backbone features (for the OOD model), when there
    are."""
    targets = np.array([row.target for row in rows])
    probabilities, features = predict_probabilities(
        model, images_dir, rows, batch_size, features_fn
    )
    return Evaluation(targets, probabilities, threshold), features


@torch.inference_mode()
def score_classifier(
    model: CrackClassifier,
    images_dir: Path,
    rows: list[ManifestRow],
    features_cache: Path | None,
    threshold: float | None = None,
    engine: str = "torch",
    graph_cache: Path | None = None,
) -> tuple[Evaluation, np.ndarray]:
    """Evaluate a crackdet classifier as backbone then head (the same computation as
    ``model(x)``), returning the backbone features too so the probe baseline and reports can use
    them. With a frozen backbone the features come from the feature cache when present. The
    threshold defaults to the model's operating threshold (chosen on val)."""
    model.eval()
    engine = effective_engine(model, engine)
    cache = None
    if features_cache is not None and model.spec.unfrozen_blocks == 0:
        cache = FeatureCache(features_cache, cache_key(model, None, 0, engine))
    extract = feature_fn(model, engine, graph_cache)
    features, _ = features_for(model, images_dir, rows, 0, None, 0, cache, extract)
    probabilities = torch.softmax(model.logits_from_features(features), dim=1)[:, 1].numpy()
    targets = np.array([row.target for row in rows])
    threshold = model.spec.threshold if threshold is None else threshold
    return Evaluation(targets, probabilities, threshold), features.numpy()


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a proportion: what a test accuracy on ``n``
    images can claim (600 images at 2 errors: 0.988 to 0.999), so that one image is not read as
    progress. The same as ``scipy.stats.binomtest(...).proportion_ci(method="wilson")`` to
    within 3.3e-16 (tests/test_evaluate.py), but not to the last bit, and metrics.json prints it in
    full: written out here so the figures stay the same bytes."""
    if n == 0:
        return 0.0, 1.0
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first_wrong: int, only_second_wrong: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers scored on the same images: the
    binomial test of the images exactly one of them gets wrong (1.0 when there are none).
    Exact integer sums: ``scipy.stats.binomtest(low, n).pvalue`` agrees to 1e-13 relative
    (tests/test_evaluate.py), not to the last bit."""
    discordant = only_first_wrong + only_second_wrong
    low = min(only_first_wrong, only_second_wrong)
    tail = sum(math.comb(discordant, k) for k in range(low + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def compare_with_baseline(model: Evaluation, baseline: Evaluation) -> dict[str, float | int]:
    """How the model and a baseline differ on the same images: the counts each alone gets
    wrong and the exact McNemar p-value of that difference."""
    model_wrong = model.predictions != model.targets
    baseline_wrong = baseline.predictions != baseline.targets
    only_model = int(np.sum(model_wrong & ~baseline_wrong))
    only_baseline = int(np.sum(baseline_wrong & ~model_wrong))
    return {
        "only_model_wrong": only_model,
        "only_baseline_wrong": only_baseline,
        "mcnemar_p": mcnemar_exact(only_model, only_baseline),
    }


def pretrained_features(
    model: CrackClassifier,
    own_features: np.ndarray,
    images_dir: Path,
    rows: list[ManifestRow],
    features_cache: Path | None,
    engine: str,
    graph_cache: Path | None = None,
) -> np.ndarray:
    """The pretrained backbone's features of ``rows``, which the probe baseline was fitted on:
    ``own_features`` (the model's) when its backbone is frozen; for a fine-tuned model those of
    the pretrained backbone it started from, rebuilt here (and cached as frozen runs cache it)."""
    spec = model.spec
    if spec.unfrozen_blocks == 0:
        return own_features
    start = build_classifier(
        spec.backbone, True, spec.hidden, spec.dropout, spec.patch_size, spec.classes
    ).eval()
    if start.spec.weights != spec.weights:
        raise CrackdetError(
            f"train.backbone {spec.backbone}: the model was fine-tuned from {spec.weights}, but "
            f"the pretrained weights here are {start.spec.weights}; the probe baseline needs "
            "the former (put them back, or rerun train)"
        )
    _, features = score_classifier(
        start, images_dir, rows, features_cache, engine=engine, graph_cache=graph_cache
    )
    return features
