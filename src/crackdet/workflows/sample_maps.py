"""The predict_samples stage's work: crack maps of ``data/photos`` with the trained checkpoint,
written whole to ``outputs/predict`` and logged into the pipeline's run."""

from __future__ import annotations

from dataclasses import asdict

from crackdet.core.errors import CrackdetError
from crackdet.core.io import atomic_dir, write_json
from crackdet.core.layout import Layout
from crackdet.core.params import PredictParams
from crackdet.maps.mapping import MappedPhotos, map_photos
from crackdet.maps.photos import list_photos
from crackdet.model.classifier import load_checkpoint
from crackdet.model.ood import OODModel
from crackdet.tracking.runs import RunInfo, log_stage_params, resume_pipeline_run


def predict_samples(layout: Layout, cfg: PredictParams) -> MappedPhotos:
    """Run the predict_samples stage into ``outputs/predict`` (whole or not at all)."""
    import mlflow  # ~1.3 s to import: only in the stages that log

    model = load_checkpoint(layout.train.model, layout.train.spec, cfg.engine, layout.graph_cache)
    photos = list_photos(layout.photos)
    if not photos:
        raise CrackdetError(
            f"{layout.photos.relative_to(layout.root)}: no photos to map (add some and "
            "`dvc add data`)"
        )
    ood = OODModel.load(layout.train.ood)
    run_id = RunInfo.read(layout).run_id
    with atomic_dir(layout.predict) as out:
        mapped = map_photos(model, photos, out, cfg, f"run {run_id}", ood, layout.graph_cache)
        if mapped.errors:
            raise CrackdetError(
                f"{len(mapped.errors)} of {len(photos)} photos could not be read (named above); "
                "fix or remove them and rerun"
            )
        write_json(out / "summary.json", {"photos": [s.to_dict() for s in mapped.summaries]})
    with resume_pipeline_run(layout):
        log_stage_params(layout.root, "predict", asdict(cfg))
        mlflow.log_artifacts(str(layout.predict), artifact_path="predict_samples")
        mlflow.log_metric(
            "predict_mean_crack_fraction",
            sum(s.crack_area_fraction for s in mapped.summaries) / len(mapped.summaries),
        )
    return mapped
