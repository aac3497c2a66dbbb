"""``crackdet eval DATA --model MODEL``: score any model on any labelled data set.

DATA is a folder or archive in the public layout (``Positive/``, ``Negative/``); MODEL a trained
checkpoint folder (``outputs/train``) or a registry URI (``models:/crack-classifier@champion``).
The data goes through fetch's own import and decoding (same checks, same limits, and
``fetch.on_bad_image``: ``skip`` leaves unreadable images out, named), the metrics are
the evaluate stage's, and the result is logged as an MLflow run of its own in experiment
``crackdet-evaluations`` (started before the work, so its duration is the evaluation's), tagged
with the data's archive and manifest digests and the model reference, so an external figure is
as traceable as a pipeline one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from crackdet.core.errors import CrackdetError
from crackdet.core.io import write_json
from crackdet.core.layout import Layout
from crackdet.core.params import EvaluateParams, FetchParams
from crackdet.data.fetch import index_images
from crackdet.data.manifest import manifest_digest
from crackdet.data.sources.labelled import ExtractLimits, import_labelled
from crackdet.model.classifier import operating_threshold
from crackdet.model.engines import classifier_features
from crackdet.model.metrics import coverage, score_rows_with_features
from crackdet.model.plots import write_curves, write_plot_images
from crackdet.tracking.metric_names import section_names
from crackdet.tracking.provenance import git_state
from crackdet.tracking.runs import ending, start_evaluation_run
from crackdet.workflows.models import load_model, ood_beside


def score_dataset(
    data: Path,
    model_ref: str,
    cfg: EvaluateParams,
    fetch: FetchParams,
    layout: Layout,
    out: Path | None = None,
) -> dict[str, Any]:
    """Import ``data``, evaluate ``model_ref`` on every image, log a run; return the metrics.
    ``fetch``: the import limits (``fetch.max_*``); ``cfg``: batch size and engine."""
    import mlflow  # ~1.3 s to import: only in the commands that log

    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    # The run starts before the work: its duration is the evaluation's.
    run = start_evaluation_run(layout.root, "eval", f"eval {data.name}")
    with ending(run), tempfile.TemporaryDirectory(prefix="crackdet-eval-") as tmp:
        mlflow.set_tags({"eval.data": data.name, "eval.model": model_ref, **git_state(layout.root)})
        model = load_model(model_ref, layout)
        limits = ExtractLimits(fetch.max_files, fetch.max_bytes)
        images, work = Path(tmp) / "images", Path(tmp) / "work"
        work.mkdir()
        imported = import_labelled(data, images, work, limits)
        # fetch.on_bad_image as fetch reads it: the error's hint names that key.
        indexed = index_images(images, str(data), fetch.on_bad_image, fetch.max_pixels)
        left_out = imported.left_out + indexed.left_out
        if left_out:
            print(f"eval: left out {len(left_out)} entries of {data}: {'; '.join(left_out)}")
        if indexed.skipped:
            n = len(indexed.skipped)
            print(
                f"eval: skipped {n} unreadable image{'s' if n > 1 else ''} of {data} "
                f"(fetch.on_bad_image: skip): {'; '.join(indexed.skipped)}"
            )
        features_fn = classifier_features(model, cfg.engine, layout.graph_cache)
        # The operating threshold chosen on val travels with a checkpoint (as in evaluate).
        threshold = operating_threshold(model, 0.5)
        evaluation, features = score_rows_with_features(
            model, images, indexed.rows, cfg.batch_size, threshold, features_fn
        )
        metrics = evaluation.metrics()
        metrics["skipped"] = indexed.skipped
        ood = ood_beside(model_ref)
        if ood is not None and features is not None:  # share flagged, figures on the rest
            metrics["coverage"] = coverage(evaluation, ood.is_ood(features))
        data_tags = {
            "data.manifest_sha256": manifest_digest(indexed.rows),
            "data.left_out": str(len(left_out)),
            "data.skipped": str(len(indexed.skipped)),
        }
        if imported.archive_sha256:
            data_tags["data.archive_sha256"] = imported.archive_sha256
        mlflow.set_tags(data_tags)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(
            section_names(scalars, "test") | section_names(metrics.get("coverage", {}), "coverage")
        )
        report = Path(tmp) / "report"
        write_curves(evaluation, indexed.rows, report)
        write_plot_images(evaluation, report)
        write_json(report / "metrics.json", metrics)
        mlflow.log_artifacts(str(report), artifact_path="eval")
        if out is not None:
            write_json(out, metrics)
    return metrics
