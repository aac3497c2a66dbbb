"""``crackdet eval-maps DATA``: score a model's crack maps against pixel masks and log the
result as an MLflow run of its own in experiment ``crackdet-evaluations``, started before the
work so its duration is the evaluation's (crackdet.maps.scoring does the scoring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError
from crackdet.core.io import sha256_file, write_json
from crackdet.core.layout import Layout
from crackdet.core.overrides import predict_settings
from crackdet.core.params import Params, PredictParams
from crackdet.data.sources.labelled import ExtractLimits
from crackdet.maps.scoring import MapsResult, evaluate_maps, photos_csv, windows_csv
from crackdet.model.engines import effective_engine, engine_label
from crackdet.tracking.metric_names import TIME, pixel_names, section_names
from crackdet.tracking.provenance import git_state
from crackdet.tracking.runs import ending, start_evaluation_run
from crackdet.workflows.models import checkpoint_folder, load_model, ood_beside


def run_eval_maps(
    data: Path,
    model_ref: str,
    params: Params,
    layout: Layout,
    *,
    scale: float | str | None = None,
    overlap: float | None = None,
    threshold: float | None = None,
    out: Path | None = None,
    progress: bool = False,
    photos: str = "*",
    pixel_threshold: float | None = None,
) -> dict[str, Any]:
    """Load ``model_ref``, score its maps on ``data``, log an MLflow run; return the metrics.
    ``scale``/``overlap``/``threshold`` default to params.yaml ``predict.*`` (threshold: the
    model's own when ``predict.use_model_threshold``); ``pixel_threshold`` to the pixel
    decoder's own."""
    import mlflow  # ~1.3 s to import: only in the commands that log

    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    if pixel_threshold is not None and not 0.0 < pixel_threshold < 1.0:
        raise CrackdetError(
            f"--pixel-threshold must be between 0 and 1 (exclusive); got {pixel_threshold}"
        )
    settings = predict_settings(params, scale=scale, overlap=overlap, threshold=threshold)
    # The run starts before the work: its duration is the evaluation's.
    with ending(start_evaluation_run(layout.root, "eval-maps", f"eval-maps {data.name}")) as run:
        tags = {"eval.data": data.name, "eval.model": model_ref, **git_state(layout.root)}
        if data.is_file():
            tags["data.archive_sha256"] = sha256_file(data)
        mlflow.set_tags(tags)
        model, result = _score_maps(
            data, model_ref, params, settings, layout, progress, photos, pixel_threshold
        )
        metrics = {"data": str(data), "model": model_ref, **result.metrics}
        mlflow.log_params(
            {
                "scale": metrics["scale"],
                "overlap": metrics["overlap"],
                "threshold": metrics["threshold"],
                "min_pixels": metrics["min_pixels"],
                "photos": photos,
                "engine": engine_label(effective_engine(model, settings.engine)),
                # What the measured crack lengths depend on (pixels/length_error_median).
                "pixel_hysteresis": settings.pixel_hysteresis,
                "crack_gap_px": settings.crack_gap_px,
                "min_crack_length_px": settings.min_crack_length_px,
            }
            | {k: metrics[k] for k in ("pixel_threshold", "pixel_tolerance") if k in metrics}
        )
        figures = {
            key: float(metrics[key])
            for key in (*FIGURES, *(f"accepted_{k}" for k in FIGURES), "ood_share")
            if metrics.get(key) is not None  # undefined figures are left out, not logged as 0
        } | {
            key: float(metrics[key])
            for key in (
                "windows_crack",
                "windows_clean",
                "windows_ignored",
                "windows_planking",
                "photos",
            )
        }
        mlflow.log_metrics(
            section_names(figures, "maps")
            | pixel_names(metrics)
            | {f"{TIME}maps_s": float(metrics["seconds"])}
        )
        mlflow.log_dict(metrics, "eval-maps/metrics.json")
        mlflow.log_text(windows_csv(result.windows), "eval-maps/windows.csv")
        if result.photos:
            mlflow.log_text(photos_csv(result.photos), "eval-maps/photos.csv")
        else:
            mlflow.set_tag("eval.pixels_absent", metrics["pixels_absent"])
        metrics["run_id"] = run.info.run_id
    if out is not None:
        write_json(out, metrics)
    return metrics


FIGURES = ("auroc", "precision", "recall", "planking_fpr", "f1_threshold")


def _score_maps(
    data: Path,
    model_ref: str,
    params: Params,
    settings: PredictParams,
    layout: Layout,
    progress: bool,
    photos: str,
    pixel_threshold: float | None,
) -> tuple[Any, MapsResult]:
    """The model and its maps scored on ``data`` (arguments as for run_eval_maps)."""
    model = load_model(model_ref, layout)
    result = evaluate_maps(
        data,
        model,
        settings,
        photos=photos,
        limits=ExtractLimits(params.fetch.max_files, params.fetch.max_bytes),
        graph_cache=layout.graph_cache,
        ood=ood_beside(model_ref),
        progress=progress,
        pixel_threshold=pixel_threshold,
        checkpoint=checkpoint_folder(model_ref, layout),
    )
    return model, result


def summary_line(metrics: dict[str, Any]) -> str:
    """One line for the terminal."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"eval-maps {Path(str(metrics.get('data', ''))).name}: auroc {fmt(metrics['auroc'])} "
        f"precision {fmt(metrics['precision'])} recall {fmt(metrics['recall'])} "
        f"@ {metrics['threshold']:.3f}, planking fpr {fmt(metrics['planking_fpr'])} "
        f"({metrics['planking_flagged']}/{metrics['windows_planking']}); windows "
        f"{metrics['windows_crack']} crack / {metrics['windows_clean']} clean / "
        f"{metrics['windows_ignored']} ignored on {metrics['photos']} photos "
        f"(scale {metrics['scale']}, overlap {metrics['overlap']}) in {metrics['seconds']:.1f} s; "
        f"F1-optimal threshold on these windows {fmt(metrics.get('f1_threshold'))}"
        + (
            f"; unfamiliar {metrics['ood_share']:.1%} of windows, auroc on the rest "
            f"{fmt(metrics.get('accepted_auroc'))}"
            if "ood_share" in metrics
            else ""
        )
        + _pixels(metrics)
        + _left_out(metrics.get("left_out", []))
    )


def _pixels(metrics: dict[str, Any]) -> str:
    """The crack-pixel figures, or why there are none."""
    if "pixels_absent" in metrics:
        return f"; crack pixels: none scored, {metrics['pixels_absent']}"

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    without = metrics.get("photos_without_pixels", [])
    return (
        f"; crack pixels ({metrics['pixel_tolerance']:g}-px tolerance) @ "
        f"{metrics['pixel_threshold']:.3f}: f1 {fmt(metrics['pixel_f1'])} precision "
        f"{fmt(metrics['pixel_precision'])} recall {fmt(metrics['pixel_recall'])}, planking "
        f"called crack {fmt(metrics['pixel_planking_called'])}, median length error "
        f"{fmt(metrics['length_error_median'])} on {metrics['photos_with_pixels']} photos"
        + (f" ({len(without)} mapped without pixels: {', '.join(without[:10])})" if without else "")
    )


def _left_out(entries: list[str]) -> str:
    """What of images/ was not scored, counted and named (the first ten)."""
    if not entries:
        return ""
    more = f" and {len(entries) - 10} more" if len(entries) > 10 else ""
    return f"; left out {len(entries)} entries of images/: {', '.join(entries[:10])}{more}"
