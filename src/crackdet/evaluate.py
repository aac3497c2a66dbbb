"""Evaluation on a labelled split: probabilities, metrics, curves and plots."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn import metrics as skm

from crackdet.calibrate import expected_calibration_error
from crackdet.data import CLASSES, ManifestRow
from crackdet.engine import FeatureFn
from crackdet.io import write_text, write_with
from crackdet.models import CrackClassifier
from crackdet.train import load_images


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
        return {
            "accuracy": float(skm.accuracy_score(y, p)),
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


@torch.inference_mode()
def predict_probabilities(
    model: torch.nn.Module,
    images_dir: Path,
    rows: list[ManifestRow],
    batch_size: int,
    features_fn: FeatureFn | None = None,
) -> np.ndarray:
    """Crack probability of each image from any model taking float RGB [0, 1] NCHW (a checkpoint
    or a registry model), read and batched in chunks to bound memory. ``features_fn``: a crackdet
    classifier's backbone features by an engine (crackdet.engine), then its head."""

    model.eval()
    probs = []
    for start in range(0, len(rows), batch_size):
        batch = load_images(images_dir, rows[start : start + batch_size]).float() / 255.0
        if features_fn is not None:
            logits = model.logits_from_features(features_fn(batch))  # type: ignore[operator]
        else:
            logits = model(batch)
        probs.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    return np.concatenate(probs) if probs else np.zeros(0)


def evaluate_rows(
    model: torch.nn.Module,
    images_dir: Path,
    rows: list[ManifestRow],
    batch_size: int,
    threshold: float = 0.5,
    features_fn: FeatureFn | None = None,
) -> Evaluation:
    targets = np.array([row.target for row in rows])
    probabilities = predict_probabilities(model, images_dir, rows, batch_size, features_fn)
    return Evaluation(targets, probabilities, threshold)


@torch.inference_mode()
def evaluate_classifier(
    model: CrackClassifier,
    images_dir: Path,
    rows: list[ManifestRow],
    cache_dir: Path | None,
    threshold: float | None = None,
    engine: str = "torch",
) -> tuple[Evaluation, np.ndarray]:
    """Evaluate a crackdet classifier as backbone then head (the same computation as
    ``model(x)``), returning the backbone features too so the probe baseline and reports can use
    them. With a frozen backbone the features come from the feature cache when present. The
    threshold defaults to the model's operating threshold (chosen on val)."""
    from crackdet.engine import effective_engine, feature_fn
    from crackdet.features import FeatureCache, cache_key, features_for, onnx_dir

    model.eval()
    engine = effective_engine(model, engine)
    cache = None
    if cache_dir is not None and model.spec.unfrozen_blocks == 0:
        cache = FeatureCache(cache_dir, cache_key(model, None, 0, engine))
    extract = feature_fn(model, engine, onnx_dir(cache_dir))
    features, _ = features_for(model, images_dir, rows, 0, None, 0, cache, extract)
    probabilities = torch.softmax(model.logits_from_features(features), dim=1)[:, 1].numpy()
    targets = np.array([row.target for row in rows])
    threshold = model.spec.threshold if threshold is None else threshold
    return Evaluation(targets, probabilities, threshold), features.numpy()


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_curves(evaluation: Evaluation, rows: list[ManifestRow], out: Path) -> None:
    """CSV files that DVC plots render: ROC, precision-recall, confusion, per-image predictions."""
    y, prob = evaluation.targets, evaluation.probabilities
    fpr, tpr, roc_thr = skm.roc_curve(y, prob)
    precision, recall, pr_thr = skm.precision_recall_curve(y, prob)
    write_text(
        out / "roc.csv",
        _csv(
            ["fpr", "tpr", "threshold"],
            [
                [f"{a:.6f}", f"{b:.6f}", f"{min(c, 1.0):.6f}"]
                for a, b, c in zip(fpr, tpr, roc_thr, strict=True)
            ],
        ),
    )
    write_text(
        out / "pr.csv",
        _csv(
            ["recall", "precision", "threshold"],
            [
                [f"{r:.6f}", f"{p:.6f}", f"{t:.6f}"]
                for r, p, t in zip(recall[:-1], precision[:-1], pr_thr, strict=True)
            ],
        ),
    )
    write_text(
        out / "confusion.csv",
        _csv(
            ["actual", "predicted"],
            [[CLASSES[a], CLASSES[b]] for a, b in zip(y, evaluation.predictions, strict=True)],
        ),
    )
    write_text(
        out / "predictions.csv",
        _csv(
            ["path", "label", "crack_probability"],
            [[r.path, r.label, f"{q:.6f}"] for r, q in zip(rows, prob, strict=True)],
        ),
    )


def write_plot_images(evaluation: Evaluation, out: Path) -> list[Path]:
    """ROC, PR and confusion-matrix PNGs (for MLflow and DVC image plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, prob = evaluation.targets, evaluation.probabilities
    paths = []
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    fpr, tpr, _ = skm.roc_curve(y, prob)
    ax.plot(fpr, tpr, label=f"AUC {skm.roc_auc_score(y, prob):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / "roc.png"))
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    precision, recall, _ = skm.precision_recall_curve(y, prob)
    ax.plot(recall, precision)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    paths.append(_save(fig, out / "pr.png"))
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    matrix = skm.confusion_matrix(y, evaluation.predictions, labels=[0, 1])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > matrix.max() / 2 else "black",
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="actual",
        title="Confusion (test)",
    )
    paths.append(_save(fig, out / "confusion.png"))
    return paths


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
