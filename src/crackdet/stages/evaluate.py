"""DVC stage ``evaluate``: ``python -m crackdet.stages.evaluate``.

Scores the trained checkpoint on the test split (used here and nowhere else), writes DVC metrics
and plots, logs them into the pipeline's MLflow run and registers the model version.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from crackdet.data import read_manifest
from crackdet.evaluate import (
    Evaluation,
    compare_with_baseline,
    evaluate_classifier,
    pretrained_features,
    write_curves,
    write_plot_images,
)
from crackdet.features import cache_root, onnx_root
from crackdet.io import write_json
from crackdet.models import load_checkpoint
from crackdet.params import Params
from crackdet.probe import Probe
from crackdet.report import write_data_report
from crackdet.stages._common import run_stage, stage_params
from crackdet.tracking import RUN_FILE, git_state, log_stage_params, resume_pipeline_run

OUT = Path("outputs/evaluate")
TRAIN = Path("outputs/train")


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """A new version of ``name`` in the MLflow model registry, tagged with its lineage."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    return {"name": name, "version": int(version.version), "run_id": run_id, "model_uri": model_uri}


def promote(root: Path, registered: dict[str, Any], params: Params) -> dict[str, Any]:
    """Judge the new version against the champion (crackdet.registry) and move an alias."""
    from crackdet.registry import auto_promote, client_for, split_reevaluator

    name = registered["name"]
    # A champion scored on another split is re-scored on this one (the test split just used).
    rescore = split_reevaluator(root, name, params.evaluate.batch_size)
    decision, entry = auto_promote(
        client_for(root), name, registered["version"], params.promote, rescore
    )
    print(f"evaluate: {name} v{registered['version']} -> {decision.alias}: {entry['why']}")
    return {"alias": decision.alias, "validation_status": decision.status}


def run(root: Path) -> dict[str, Any]:
    import mlflow

    params = stage_params(root)
    model = load_checkpoint(
        root / TRAIN / "model.pt",
        root / TRAIN / "model.json",
        params.evaluate.engine,
        onnx_root(root),
    )
    rows = read_manifest(root / "outputs/split/test.csv")
    images = root / "outputs/fetch/images"
    evaluation, features = evaluate_classifier(
        model, images, rows, cache_root(root), engine=params.evaluate.engine
    )
    metrics = evaluation.metrics()
    probe_file = json.loads((root / TRAIN / "probe.json").read_text())
    if probe_file:  # the baseline on the pretrained backbone's features, on the same images
        probe = Probe.from_dict(probe_file)
        pretrained = pretrained_features(
            model, features, images, rows, cache_root(root), params.evaluate.engine
        )
        probe_eval = Evaluation(evaluation.targets, probe.crack_probability(pretrained), 0.5)
        probe_metrics = probe_eval.metrics()
        metrics["probe"] = {
            **{k: probe_metrics[k] for k in ("accuracy", "f1", "roc_auc")},
            **compare_with_baseline(evaluation, probe_eval),
        }
    out = root / OUT
    write_curves(evaluation, rows, out)
    plots = write_plot_images(evaluation, out / "plots")
    plots += write_data_report(
        root,
        images,
        rows,
        evaluation.targets,
        evaluation.probabilities,
        out / "report",
    )
    write_json(out / "metrics.json", metrics)
    run_info = json.loads((root / RUN_FILE).read_text())
    with resume_pipeline_run(root) as active:
        log_stage_params("evaluate", dataclasses.asdict(params.evaluate))
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics({f"test_{k}": v for k, v in scalars.items()})
        if "probe" in metrics:
            mlflow.log_metrics({f"probe_test_{k}": v for k, v in metrics["probe"].items()})
        mlflow.log_artifact(str(out / "metrics.json"), artifact_path="evaluate")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        registered: dict[str, Any] = {}
        if params.evaluate.register:
            run_tags = active.data.tags
            tags = {
                "run_id": active.info.run_id,
                **git_state(root),
                "data.manifest_sha256": run_tags.get("data.manifest_sha256", ""),
                "data.split_fingerprint": run_tags.get("data.split_fingerprint", ""),
                **{f"test_{k}": f"{scalars[k]:.6f}" for k in ("accuracy", "f1", "roc_auc")},
            }
            registered = register(
                run_info["model_uri"], params.evaluate.model_name, active.info.run_id, tags
            )
            registered.update(promote(root, registered, params))
    write_json(out / "registered.json", registered)
    version = f"; registered {registered['name']} v{registered['version']}" if registered else ""
    print(
        f"evaluate: test accuracy {metrics['accuracy']:.4f} (95 % CI "
        f"{metrics['accuracy_ci95_low']:.4f}-{metrics['accuracy_ci95_high']:.4f}) precision "
        f"{metrics['precision']:.4f} recall {metrics['recall']:.4f} f1 {metrics['f1']:.4f} "
        f"roc_auc {metrics['roc_auc']:.4f} on {metrics['n']} images{version}"
    )
    if "probe" in metrics:
        probe = metrics["probe"]
        print(
            f"evaluate: probe baseline accuracy {probe['accuracy']:.4f}; wrong only by the model "
            f"{probe['only_model_wrong']}, only by the probe {probe['only_baseline_wrong']} "
            f"(exact McNemar p {probe['mcnemar_p']:.3f})"
        )
    return metrics


def main() -> int:
    return run_stage("evaluate", run)


if __name__ == "__main__":
    sys.exit(main())
