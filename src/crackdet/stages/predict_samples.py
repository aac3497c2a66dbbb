"""DVC stage ``predict_samples``: ``python -m crackdet.stages.predict_samples``.

Maps every photo in ``data/photos/`` (tracked by ``data.dvc``) with the trained checkpoint:
an overlay PNG and a JSON of tile probabilities per photo, logged into the pipeline's MLflow run.
A photo that cannot be read is named on one line and the others are still mapped; the stage then
fails so DVC does not record an incomplete result.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crackdet.engine import classifier_features, effective_engine, engine_label
from crackdet.errors import CrackdetError
from crackdet.features import onnx_root
from crackdet.io import atomic_dir, write_json, write_with
from crackdet.models import CrackClassifier, load_checkpoint
from crackdet.ood import OODModel
from crackdet.params import PredictParams
from crackdet.predict import crack_map, list_photos, overlay_image, read_photo
from crackdet.stages._common import run_stage, stage_params
from crackdet.tracking import RUN_FILE, log_stage_params, resume_pipeline_run

PHOTOS = Path("data/photos")
# zlib level 1: a 12 MP overlay encodes in ~0.8 s instead of ~4.8 s at the default 6, ~9 % larger.
PNG = {"format": "PNG", "compress_level": 1}
OUT = Path("outputs/predict")
TRAIN = Path("outputs/train")


def map_photos(
    model: CrackClassifier,
    photos: list[Path],
    out: Path,
    params: PredictParams,
    model_ref: str = "",
    ood: OODModel | None = None,
    onnx_cache: Path | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per photo: ``<stem>_overlay.png``, ``<stem>_heatmap.png`` / ``.npy`` (crack probability),
    ``<stem>_mask.png`` (at the threshold) and ``<stem>.json``; plus ``contact_sheet.png``.
    Returns per-photo summaries and the errors of photos that could not be read.
    ``onnx_cache``: folder of exported graphs for the onnxruntime and openvino engines (None:
    temp export)."""
    summaries, errors, thumbnails = [], [], []
    engine = effective_engine(model, params.engine)  # torch for a registry (pt2) model
    extract = classifier_features(model, engine, onnx_cache)
    # The operating threshold chosen on val travels with the model; params can override it.
    threshold = params.threshold
    if params.use_model_threshold:
        threshold = float(getattr(model.spec, "threshold", params.threshold))
    for photo_path in photos:
        try:
            photo = read_photo(photo_path, params.max_pixels)
        except CrackdetError as exc:
            print(f"predict_samples: error: {exc}", file=sys.stderr)
            errors.append(str(exc))
            continue
        result = crack_map(
            model, photo, params.overlap, params.batch_size, params.scale, ood, extract
        )
        overlay = overlay_image(photo, result.heatmap, params.alpha, result.ood_map)
        stem = photo_path.stem
        write_with(out / f"{stem}_overlay.png", partial(overlay.save, **PNG))
        heat8 = Image.fromarray(np.round(result.heatmap * 255).astype(np.uint8), "L")
        write_with(out / f"{stem}_heatmap.png", partial(heat8.save, **PNG))
        write_with(
            out / f"{stem}_heatmap.npy", partial(_save_npy, result.heatmap.astype(np.float16))
        )
        mask = Image.fromarray(((result.heatmap >= threshold) * 255).astype(np.uint8), "L")
        write_with(out / f"{stem}_mask.png", partial(mask.save, **PNG))
        summary = {
            "photo": photo_path.name,
            "width": int(photo.shape[1]),
            "height": int(photo.shape[0]),
            "model": model_ref,
            "threshold": threshold,
            "overlap": params.overlap,
            "scale": params.scale,
            "engine": engine_label(engine),
            "crack_area_fraction": round(result.crack_fraction(threshold), 6),
            "tiles_flagged": sum(t["p"] >= threshold for t in result.tiles),
            "tiles_total": len(result.tiles),
            "ood_fraction": result.ood_fraction,
            "seconds": round(result.seconds, 3),
        }
        write_json(out / f"{stem}.json", {**summary, "tiles": result.tiles})
        summaries.append(summary)
        thumbnails.append(overlay)
        print(
            f"predict_samples: {photo_path.name}: {summary['tiles_flagged']}/"
            f"{summary['tiles_total']} tiles over {threshold:.3f} in {result.seconds:.1f} s"
        )
    if thumbnails:
        sheet = contact_sheet(thumbnails)
        write_with(out / "contact_sheet.png", partial(sheet.save, format="PNG"))
    return summaries, errors


def _save_npy(array: np.ndarray, path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def contact_sheet(overlays: list[Image.Image], width: int = 400, columns: int = 3) -> Image.Image:
    thumbs = [o.resize((width, max(1, round(o.height * width / o.width)))) for o in overlays]
    cell_h = max(t.height for t in thumbs)
    rows = -(-len(thumbs) // columns)
    sheet = Image.new("RGB", (width * min(columns, len(thumbs)), cell_h * rows), (255, 255, 255))
    for k, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((k % columns) * width, (k // columns) * cell_h))
    return sheet


def run(root: Path) -> list[dict[str, Any]]:
    import mlflow

    params = stage_params(root)
    model = load_checkpoint(
        root / TRAIN / "model.pt",
        root / TRAIN / "model.json",
        params.predict.engine,
        onnx_root(root),
    )
    photos = list_photos(root / PHOTOS)
    if not photos:
        raise CrackdetError(f"{PHOTOS}: no photos to map (add some and `dvc add data`)")
    with atomic_dir(root / OUT) as out:
        run_id = json.loads((root / RUN_FILE).read_text()).get("run_id", "")
        ood = OODModel.load(root / TRAIN / "ood.npz")
        summaries, errors = map_photos(
            model, photos, out, params.predict, f"run {run_id}", ood, onnx_root(root)
        )
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
            sum(s["crack_area_fraction"] for s in summaries) / len(summaries),
        )
    return summaries


def main() -> int:
    return run_stage("predict_samples", run)


if __name__ == "__main__":
    sys.exit(main())
