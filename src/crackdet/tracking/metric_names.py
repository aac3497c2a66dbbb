"""How figures are named in MLflow: ``section/name``. MLflow's UI makes one chart section per
prefix before the ``/`` (``val``, ``test``, ``time``, …) instead of one alphabetical list where
timings sit among accuracies. Only MLflow's names: the DVC metric files (``outputs/*/metrics.json``)
keep their flat keys, which ``dvc metrics`` and ``crackdet ci-check`` read.
"""

from __future__ import annotations

from collections.abc import Mapping

# Wall-clock and cache-dependent figures: never compared by a replay.
TIME = "time/"

# Per epoch (step = epoch), from train's epoch records.
EPOCH = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "lr": "train/lr",
    "seconds": "time/epoch_s",
}

# The pixel decoder's figures per epoch (step = epoch), from its epoch records.
DECODER_EPOCH = {
    "train_loss": "decoder/train_loss",
    "val_loss": "decoder/val_loss",
    "val_precision": "decoder/val_precision",
    "val_recall": "decoder/val_recall",
    "val_f1": "decoder/val_f1",
    "val_planking": "decoder/val_planking",
    "seconds": "time/decoder_epoch_s",
}
DECODER = "decoder/"  # the decoder's summary figures: decoder/best_epoch, decoder/threshold, …

# Train's figures (outputs/train/metrics.json keys and the fit's summary) → their MLflow names.
FIT = {
    "best_epoch": "val/best_epoch",
    "best_val_acc": "val/best_acc",
    "best_val_loss": "val/best_loss",
    "probe_val_acc": "val/probe_acc",
    "val_ece": "val/ece",
    "val_ece_raw": "val/ece_raw",
    "temperature": "calibration/temperature",
    "threshold": "calibration/threshold",
    "ood_threshold": "calibration/ood_threshold",
    "train_images": "data/train_images",
    "val_images": "data/val_images",
}


# eval-maps' crack-pixel figures (metrics.json keys) → their MLflow names.
PIXELS = {
    "pixel_precision": "pixels/precision",
    "pixel_recall": "pixels/recall",
    "pixel_f1": "pixels/f1",
    "pixel_planking_called": "pixels/planking_called",
    "length_error_median": "pixels/length_error_median",
    "photos_with_pixels": "pixels/photos",
}


def pixel_names(figures: Mapping[str, float | None]) -> dict[str, float]:
    """The pixel figures that are defined, under ``pixels/`` (undefined ones are left out)."""
    return {name: float(figures[k]) for k, name in PIXELS.items() if figures.get(k) is not None}


# The window head's epochs (step = epoch; epoch 0: the classifier's head read in context).
WINDOW_HEAD_EPOCH = {
    "train_loss": "window_head/train_loss",
    "val_loss": "window_head/val_loss",
    "val_acc": "window_head/val_acc",
    "val_auc": "window_head/val_auc",
    "seconds": "time/window_head_epoch_s",
}


def window_head_names(figures: Mapping[str, float]) -> dict[str, float]:
    """The window head's summary figures as ``window_head/<figure>``."""
    return section_names(figures, "window_head")


def fit_names(figures: Mapping[str, float]) -> dict[str, float]:
    """Train's figures under their sections (a figure not listed goes to ``train/``)."""
    return {FIT.get(k, f"train/{k}"): v for k, v in figures.items()}


def timing_names(timings: Mapping[str, float]) -> dict[str, float]:
    return {f"{TIME}{k}": v for k, v in timings.items()}


def section_names(scalars: Mapping[str, float], section: str) -> dict[str, float]:
    """``section/<figure>``: test figures as ``test/accuracy``, the probe baseline's as
    ``baseline/…``, the OOD coverage figures as ``coverage/…``, map figures as ``maps/…``."""
    return {f"{section}/{k}": v for k, v in scalars.items()}


def per_source_names(per_source: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``source/<name>_<figure>``: one section holding every source's test figures."""
    return {
        f"source/{name}_{k}": float(v)
        for name, figures in per_source.items()
        for k, v in figures.items()
    }


def is_timing(name: str) -> bool:
    """Time and cache figures, under this naming or the flat one runs logged before it."""
    return name.startswith(TIME) or name.endswith(("_s", "_seconds")) or name == "forward_passes"
