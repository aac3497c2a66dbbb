"""The predict_samples stage's work: crack maps of ``data/photos`` with the trained checkpoint
and their inspection report (``index.html``), written whole to ``outputs/predict`` and logged
into the pipeline's run."""

from __future__ import annotations

from dataclasses import asdict

from crackdet.core.errors import CrackdetError
from crackdet.core.io import atomic_dir, sha256_file, write_json
from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams
from crackdet.maps.html_report import write_report
from crackdet.maps.mapping import MappedPhotos, checkpoint_digest, map_photos
from crackdet.maps.photos import left_out_line, list_photos
from crackdet.model.classifier import load_checkpoint
from crackdet.model.ood import OODModel
from crackdet.tracking.metric_names import TIME
from crackdet.tracking.runs import log_stage_params, resume_pipeline_run


def predict_samples(layout: Layout, cfg: PredictParams) -> MappedPhotos:
    """Run the predict_samples stage into ``outputs/predict`` (whole or not at all)."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    model = load_checkpoint(layout.train.model, layout.train.spec, cfg.engine, layout.graph_cache)
    folder = list_photos(layout.photos)
    if folder.left_out:
        print(left_out_line("predict_samples", folder.left_out))
    if not folder.photos:
        raise CrackdetError(
            f"{layout.photos.relative_to(layout.root)}: no photos to map (add some and "
            "`dvc add data`)"
        )
    ood = OODModel.load(layout.train.ood)
    # The weights' digest, not the MLflow run id: outputs must be the same bytes on every run.
    model_ref = (
        f"{layout.train.model.relative_to(layout.root)} sha256:{sha256_file(layout.train.model)}"
    )
    digest = checkpoint_digest(layout.train.dir)
    with atomic_dir(layout.predict) as out:
        mapped = map_photos(
            model,
            folder.photos,
            out,
            cfg,
            model_ref,
            ood,
            layout.graph_cache,
            model_digest=digest,
            folder=layout.train.dir,
        )
        if mapped.errors:
            raise CrackdetError(
                f"{len(mapped.errors)} of {len(folder.photos)} photos could not be read (named "
                "above); fix or remove them and rerun"
            )
        summaries = [s.to_dict() for s in mapped.summaries]
        left_out = [p.name for p in folder.left_out]
        write_json(out / "summary.json", {"photos": summaries, "left_out": left_out})
        write_report(out, mapped, f"Crack maps of {layout.photos.relative_to(layout.root)}")
    with resume_pipeline_run(layout):
        log_stage_params(layout.root, "predict", asdict(cfg))
        mlflow.log_artifacts(str(layout.predict), artifact_path="predict_samples")
        mlflow.log_metrics(
            {
                "predict/mean_crack_fraction": sum(s.crack_area_fraction for s in mapped.summaries)
                / len(mapped.summaries),
                f"{TIME}predict_s": sum(mapped.seconds),
                "predict/left_out": len(folder.left_out),
            }
        )
    return mapped
