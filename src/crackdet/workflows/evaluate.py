"""The evaluate stage's work: score the checkpoint on the test split (read here and nowhere
else), compare it with the probe, write DVC metrics and plots, log them into the pipeline's run,
register the model version with a markdown description and move an alias."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from crackdet.core.errors import CrackdetError
from crackdet.core.io import write_json
from crackdet.core.layout import Layout
from crackdet.core.params import EvaluateParams, PromoteParams
from crackdet.data.manifest import read_manifest
from crackdet.data.records import SplitSummary
from crackdet.model.classifier import load_checkpoint
from crackdet.model.data_report import write_data_report
from crackdet.model.metrics import (
    Evaluation,
    compare_with_baseline,
    coverage,
    per_source,
    pretrained_features,
    score_classifier,
    score_rows_with_features,
)
from crackdet.model.ood import OODModel
from crackdet.model.plots import write_curves, write_plot_images
from crackdet.model.probe import Probe
from crackdet.tracking.descriptions import version_card
from crackdet.tracking.metric_names import per_source_names, section_names
from crackdet.tracking.promotion import Reevaluator, auto_promote
from crackdet.tracking.provenance import git_state
from crackdet.tracking.registry import (
    KEY_METRICS,
    describe_version,
    load_registry_model,
    register_once,
    version_standing,
)
from crackdet.tracking.runs import log_stage_params, resume_pipeline_run
from crackdet.tracking.store import client_for


def evaluate(layout: Layout, cfg: EvaluateParams, gates: PromoteParams) -> dict[str, Any]:
    """Run the evaluate stage; return the metrics written to ``outputs/evaluate/metrics.json``."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    model = load_checkpoint(layout.train.model, layout.train.spec, cfg.engine, layout.graph_cache)
    rows = read_manifest(layout.split.manifest("test"))
    images = layout.fetch.images
    evaluation, features = score_classifier(
        model,
        images,
        rows,
        layout.features_cache,
        engine=cfg.engine,
        graph_cache=layout.graph_cache,
    )
    metrics: dict[str, Any] = evaluation.metrics()
    probe = Probe.read(layout.train.probe)
    if probe is not None:  # the baseline on the pretrained backbone's features, same images
        pretrained = pretrained_features(
            model, features, images, rows, layout.features_cache, cfg.engine, layout.graph_cache
        )
        probe_eval = Evaluation(evaluation.targets, probe.crack_probability(pretrained), 0.5)
        probe_metrics = probe_eval.metrics()
        metrics["probe"] = {
            **{k: probe_metrics[k] for k in ("accuracy", "f1", "roc_auc")},
            **compare_with_baseline(evaluation, probe_eval),
        }
    metrics["per_source"] = per_source(evaluation, [r.source for r in rows])
    ood = OODModel.load(layout.train.ood)
    if ood is not None:  # what an inspector would see flagged on test, and the rest's figures
        metrics["coverage"] = coverage(evaluation, ood.is_ood(features))
    out = layout.evaluate
    write_curves(evaluation, rows, out.dir)
    plots = write_plot_images(evaluation, out.plots)
    plots += write_data_report(
        layout, rows, evaluation.targets, evaluation.probabilities, out.report
    )
    write_json(out.metrics, metrics)
    with resume_pipeline_run(layout) as (active, run_info):
        log_stage_params(layout.root, "evaluate", asdict(cfg))
        log_stage_params(layout.root, "promote", asdict(gates))
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(
            section_names(scalars, "test")
            | section_names(metrics.get("probe", {}), "baseline")
            | per_source_names(metrics["per_source"])
            | section_names(metrics.get("coverage", {}), "coverage")
        )
        mlflow.log_artifact(str(out.metrics), artifact_path="evaluate")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        registered: dict[str, Any] = {}
        if cfg.register:
            run_tags = active.data.tags
            tags = {
                "run_id": active.info.run_id,
                **git_state(layout.root),
                "data.manifest_sha256": run_tags.get("data.manifest_sha256", ""),
                "data.split_fingerprint": run_tags.get("data.split_fingerprint", ""),
                **{f"test_{k}": f"{scalars[k]:.6f}" for k in ("accuracy", "f1", "roc_auc")},
            }
            client = client_for(layout.root)
            version, new = register_once(
                client, run_info.model_uri, cfg.model_name, tags, run_info.model_sha256
            )
            registered = {
                "name": cfg.model_name,
                "version": version,
                "run_id": active.info.run_id,
                "model_uri": run_info.model_uri,
            }
            if new:
                split = SplitSummary.read(layout.split.summary)
                card = version_card(cfg.model_name, version, active, metrics, tags, split)
                describe_version(client, card)
                registered.update(_promote(layout, cfg, gates, version))
            else:  # judged and described when it was registered
                registered.update(version_standing(client, cfg.model_name, version))
                print(
                    f"evaluate: {cfg.model_name} v{version} already holds this run's checkpoint: "
                    "not registered again"
                )
    write_json(out.registered, registered)
    _print_summary(metrics, registered)
    return metrics


def _promote(
    layout: Layout, cfg: EvaluateParams, gates: PromoteParams, version: int
) -> dict[str, str]:
    """Judge the new version against the champion and move an alias."""
    # A champion scored on another split is re-scored on this one (the test split just used).
    rescore = split_reevaluator(layout, cfg.model_name, cfg.batch_size)
    decision, entry = auto_promote(client_for(layout.root), cfg.model_name, version, gates, rescore)
    print(f"evaluate: {cfg.model_name} v{version} -> {decision.alias}: {entry['why']}")
    return {"alias": decision.alias, "validation_status": decision.status}


def _print_summary(metrics: dict[str, Any], registered: dict[str, Any]) -> None:
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


def split_reevaluator(layout: Layout, name: str, batch_size: int) -> Reevaluator:
    """Score a registered version on ``outputs/split/test.csv`` (what evaluate scores)."""

    def score(version: Any) -> dict[str, float]:
        model = load_registry_model(f"models:/{name}/{version.version}")
        rows = read_manifest(layout.split.manifest("test"))
        evaluation, _ = score_rows_with_features(model, layout.fetch.images, rows, batch_size)
        metrics = evaluation.metrics()
        return {k: float(metrics[k]) for k in KEY_METRICS}  # type: ignore[arg-type]

    return score


def workspace_reevaluator(layout: Layout, candidate: Any, batch_size: int) -> Reevaluator | None:
    """Re-score a version on the workspace's test split, if that split is the candidate's."""
    try:
        fingerprint = SplitSummary.read(layout.split.summary).fingerprint
    except CrackdetError:
        return None
    if fingerprint != candidate.tags.get("data.split_fingerprint"):
        return None
    return split_reevaluator(layout, candidate.name, batch_size)
