"""DVC stage ``predict_samples``: ``python -m crackdet.stages.predict_samples``.

Maps every photo in ``data/photos/`` (tracked by ``data.dvc``) with the trained checkpoint:
an overlay PNG and a JSON of tile probabilities per photo, logged into the pipeline's MLflow run.
A photo that cannot be read is named on one line and the others are still mapped; the stage then
fails so DVC does not record an incomplete result.
"""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
from pathlib import Path
from typing import Any

from crackdet.errors import CrackdetError
from crackdet.io import atomic_dir, write_json, write_with
from crackdet.models import CrackClassifier, load_checkpoint
from crackdet.params import PredictParams
from crackdet.predict import crack_map, list_photos, overlay_image, read_photo
from crackdet.stages._common import run_stage, stage_params
from crackdet.tracking import log_stage_params, resume_pipeline_run

PHOTOS = Path("data/photos")
OUT = Path("outputs/predict")
TRAIN = Path("outputs/train")


def map_photos(
    model: CrackClassifier, photos: list[Path], out: Path, params: PredictParams
) -> tuple[list[dict[str, Any]], list[str]]:
    """Write ``<stem>_overlay.png`` and ``<stem>.json`` per photo; return summaries and errors."""
    summaries, errors = [], []
    for photo_path in photos:
        try:
            photo = read_photo(photo_path, params.max_pixels)
        except CrackdetError as exc:
            print(f"predict_samples: error: {exc}", file=sys.stderr)
            errors.append(str(exc))
            continue
        result = crack_map(model, photo, params.overlap, params.batch_size)
        overlay = overlay_image(photo, result.heatmap, params.alpha)
        write_with(out / f"{photo_path.stem}_overlay.png", partial(overlay.save, format="PNG"))
        summary = {
            "photo": photo_path.name,
            "width": int(photo.shape[1]),
            "height": int(photo.shape[0]),
            "threshold": params.threshold,
            "overlap": params.overlap,
            "crack_fraction": round(result.crack_fraction(params.threshold), 6),
            "tiles_flagged": sum(t["p"] >= params.threshold for t in result.tiles),
            "tiles_total": len(result.tiles),
            "seconds": round(result.seconds, 3),
        }
        write_json(out / f"{photo_path.stem}.json", {**summary, "tiles": result.tiles})
        summaries.append(summary)
        print(
            f"predict_samples: {photo_path.name}: {summary['tiles_flagged']}/"
            f"{summary['tiles_total']} tiles over {params.threshold} in {result.seconds:.1f} s"
        )
    return summaries, errors


def run(root: Path) -> list[dict[str, Any]]:
    import mlflow

    params = stage_params(root)
    model = load_checkpoint(root / TRAIN / "model.pt", root / TRAIN / "model.json")
    photos = list_photos(root / PHOTOS)
    if not photos:
        raise CrackdetError(f"{PHOTOS}: no photos to map (add some and `dvc add data`)")
    with atomic_dir(root / OUT) as out:
        summaries, errors = map_photos(model, photos, out, params.predict)
        if errors:
            raise CrackdetError(
                f"{len(errors)} of {len(photos)} photos could not be read (named above); "
                "fix or remove them and rerun"
            )
        write_json(out / "summary.json", {"photos": summaries})
    with resume_pipeline_run(root):
        log_stage_params("predict", dataclasses.asdict(params.predict))
        mlflow.log_artifacts(str(root / OUT), artifact_path="predict_samples")
        mlflow.log_metric(
            "predict_mean_crack_fraction",
            sum(s["crack_fraction"] for s in summaries) / len(summaries),
        )
    return summaries


def main() -> int:
    return run_stage("predict_samples", run)


if __name__ == "__main__":
    sys.exit(main())
