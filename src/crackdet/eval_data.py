"""``crackdet eval DATA --model MODEL``: score any model on any labelled data set.

DATA is a folder or archive in the public layout (``Positive/``, ``Negative/``); MODEL a trained
checkpoint folder (``outputs/train``) or a registry URI (``models:/crack-classifier@champion``).
The data goes through fetch's own import and decoding (same checks, same limits), the metrics are
the evaluate stage's, and the result is logged as an MLflow run of its own, tagged with the data's
archive and manifest digests and the model reference, so an external figure is as traceable as
a pipeline one.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from crackdet.data import manifest_digest
from crackdet.errors import CrackdetError
from crackdet.evaluate import evaluate_rows, write_curves, write_plot_images
from crackdet.fetch import import_labelled, index_images
from crackdet.io import write_json
from crackdet.models import load_model
from crackdet.params import Params


def evaluate_dataset(
    data: Path, model_ref: str, params: Params, root: Path, out: Path | None = None
) -> dict[str, Any]:
    """Import ``data``, evaluate ``model_ref`` on every image, log a run; return the metrics."""
    import mlflow

    from crackdet.engine import classifier_features
    from crackdet.features import onnx_root
    from crackdet.tracking import git_state, init_store

    if not data.exists():
        raise CrackdetError(f"{data}: no such folder or archive")
    model = load_model(model_ref, root)
    fetch_params = dataclasses.replace(params.fetch, on_bad_image="error")
    with tempfile.TemporaryDirectory(prefix="crackdet-eval-") as tmp:
        images, work = Path(tmp) / "images", Path(tmp) / "work"
        work.mkdir()
        archive_sha = import_labelled(data, images, work, fetch_params)
        indexed = index_images(images, str(data), "error", fetch_params.max_pixels)
        features_fn = classifier_features(model, params.evaluate.engine, onnx_root(root))
        # The operating threshold chosen on val travels with a checkpoint (as in evaluate).
        threshold = float(getattr(getattr(model, "spec", None), "threshold", 0.5))
        evaluation = evaluate_rows(
            model, images, indexed.rows, params.evaluate.batch_size, threshold, features_fn
        )
        metrics = evaluation.metrics()
        init_store(root)
        with mlflow.start_run(run_name=f"eval {data.name}", tags={"crackdet.stage": "eval"}):
            mlflow.set_tags(
                {
                    "eval.data": data.name,
                    "eval.model": model_ref,
                    "data.manifest_sha256": manifest_digest(indexed.rows),
                    **({"data.archive_sha256": archive_sha} if archive_sha else {}),
                    **git_state(root),
                }
            )
            scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            mlflow.log_metrics({f"test_{k}": v for k, v in scalars.items()})
            report = Path(tmp) / "report"
            write_curves(evaluation, indexed.rows, report)
            write_plot_images(evaluation, report)
            write_json(report / "metrics.json", metrics)
            mlflow.log_artifacts(str(report), artifact_path="eval")
            if out is not None:
                write_json(out, metrics)
    return metrics
