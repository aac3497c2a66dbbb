"""What evaluate writes for DVC plots and MLflow: ROC/PR/confusion CSVs, per-image predictions,
and the same curves as PNGs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from crackdet.core.io import write_text, write_with
from crackdet.data.images import CLASSES
from crackdet.data.manifest import ManifestRow
from crackdet.model.metrics import Evaluation


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
    import matplotlib  # ~0.5 s: only evaluate draws plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg") above

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
    import matplotlib.pyplot as plt  # loaded by write_plot_images, which calls this

    fig.tight_layout()  # type: ignore[attr-defined]
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
